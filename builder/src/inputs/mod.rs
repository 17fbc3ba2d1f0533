//! Recipe → resolved inputs: the lock file, the content-addressed cache,
//! downloads, local apt repositories and the stage cache. Nothing here
//! writes into an image tree.

pub mod cache;
pub mod debrepo;
pub mod download;
pub mod gomod;
pub mod lock;
pub mod plan;
pub mod stagecache;
