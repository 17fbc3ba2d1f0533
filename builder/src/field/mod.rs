//! Field tools: writing a verified release to a stick.

pub mod flash;
