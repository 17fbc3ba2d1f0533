//! How QEMU opens a disk image, as plain data: the format table
//! (`media::FORMATS`) gives each format's, and `vm` boots whatever it is
//! given (vm reads only host/, so the table's rows carry this type).

/// QEMU's view of one image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drive {
    /// The block driver named in `-drive format=` (always named, so QEMU
    /// never probes a file's content).
    pub driver: &'static str,
    /// Read-only media booted from a CD-ROM drive by default.
    pub cdrom: bool,
    /// The file may name other host files (a qcow2's backing or data
    /// file): checked to stand alone (`host::qcow2`) before QEMU opens it.
    pub standalone_check: bool,
}
