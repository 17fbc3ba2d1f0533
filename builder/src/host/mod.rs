//! The bottom layer: things every other layer uses and that know nothing
//! of recipes or images: the one tool runner, digests, the tree-access
//! layer, cpio, progress display and the host tool table.

pub mod cpio;
pub mod deb822;
pub mod digest;
pub mod direct;
pub mod doctor;
pub mod interrupt;
pub mod limits;
pub mod parallel;
pub mod progress;
pub mod runner;
pub mod scratch;
pub mod time;
pub mod tree;
pub mod untrusted;
