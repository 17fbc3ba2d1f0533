//! Caps on what one archive (a base tarball, an image archive, a layer) may
//! make cairn read, write or hold. Every reader checks them while it
//! streams, so a bomb is stopped at the cap, not after it filled the disk.
//! The defaults fit real images; a recipe raises them in `[limits]`.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// Set-uid/set-gid files in a base tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetIdRule {
    /// Refuse the tarball, naming the file (the default).
    #[default]
    Refuse,
    /// Keep the file, drop the set-uid/set-gid bits.
    Strip,
    /// Keep the file and its bits.
    Keep,
}

impl SetIdRule {
    pub fn parse(s: &str) -> Option<SetIdRule> {
        match s {
            "refuse" => Some(SetIdRule::Refuse),
            "strip" => Some(SetIdRule::Strip),
            "keep" => Some(SetIdRule::Keep),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed bytes of one tarball, archive or layer.
    pub max_bytes: u64,
    /// Entries (members) of one tarball, archive or layer.
    pub max_entries: u64,
    /// Uncompressed bytes per compressed byte (checked past the first MiB).
    pub max_ratio: u64,
    /// Bytes of one file inside a tarball, archive or layer.
    pub max_file_bytes: u64,
    /// Set-id files in the base tarball.
    pub base_setuid: SetIdRule,
}

pub const DEFAULT_LIMITS: Limits = Limits {
    max_bytes: 64 << 30,
    max_entries: 200_000,
    max_ratio: 200,
    max_file_bytes: 16 << 30,
    base_setuid: SetIdRule::Refuse,
};

impl Default for Limits {
    fn default() -> Self {
        DEFAULT_LIMITS
    }
}

/// Compressed input below this size is never judged by its ratio (small
/// archives of zeros are normal).
pub const RATIO_GRACE: u64 = 1 << 20;

/// Which cap was hit, for one clear message naming the recipe key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Bytes,
    Entries,
    Ratio,
    FileBytes,
}

impl Cap {
    pub fn key(&self) -> &'static str {
        match self {
            Cap::Bytes => "max_bytes",
            Cap::Entries => "max_entries",
            Cap::Ratio => "max_ratio",
            Cap::FileBytes => "max_file_bytes",
        }
    }

    /// "more than the 200000-entry cap (raise [limits] max_entries in the recipe)".
    pub fn message(&self, limits: &Limits) -> String {
        let cap = match self {
            Cap::Bytes => format!("{}-byte total size cap", limits.max_bytes),
            Cap::Entries => format!("{}-entry cap", limits.max_entries),
            Cap::Ratio => format!("{}:1 compression ratio cap", limits.max_ratio),
            Cap::FileBytes => format!("{}-byte file size cap", limits.max_file_bytes),
        };
        format!(
            "exceeds the {cap} (raise `[limits] {}` in the recipe if this input is trusted; see docs/limits.md)",
            self.key()
        )
    }
}

/// Counts the entries of one archive and checks each file's size.
#[derive(Debug, Default)]
pub struct Meter {
    pub entries: u64,
}

impl Meter {
    /// One more entry.
    pub fn entry(&mut self, limits: &Limits) -> Result<(), Cap> {
        self.entries += 1;
        if self.entries > limits.max_entries {
            return Err(Cap::Entries);
        }
        Ok(())
    }

    /// Checks an entry's size against the file cap.
    pub fn file(&self, size: u64, limits: &Limits) -> Result<(), Cap> {
        if size > limits.max_file_bytes {
            return Err(Cap::FileBytes);
        }
        Ok(())
    }
}

/// Checks `uncompressed` bytes produced from `compressed` bytes read.
pub fn check_stream(uncompressed: u64, compressed: u64, limits: &Limits) -> Result<(), Cap> {
    if uncompressed > limits.max_bytes {
        return Err(Cap::Bytes);
    }
    if compressed > 0
        && uncompressed > RATIO_GRACE
        && uncompressed / compressed.max(1) > limits.max_ratio
    {
        return Err(Cap::Ratio);
    }
    Ok(())
}

/// Counts the bytes read into a shared cell: the compressed side of a
/// stream, which [`CappedReader`] compares against.
pub struct CountingReader<R> {
    r: R,
    n: Rc<Cell<u64>>,
}

impl<R> CountingReader<R> {
    pub fn new(r: R, n: Rc<Cell<u64>>) -> Self {
        CountingReader { r, n }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n.set(self.n.get() + n as u64);
        Ok(n)
    }
}

/// The uncompressed side of a stream: stops with an error at the first cap
/// it passes (total bytes, ratio to the compressed bytes read so far),
/// recording which in `hit`, or when the build is interrupted.
pub struct CappedReader<R> {
    r: R,
    n: u64,
    compressed: Rc<Cell<u64>>,
    limits: Limits,
    hit: Rc<Cell<Option<Cap>>>,
}

impl<R> CappedReader<R> {
    pub fn new(
        r: R,
        compressed: Rc<Cell<u64>>,
        limits: Limits,
        hit: Rc<Cell<Option<Cap>>>,
    ) -> Self {
        CappedReader {
            r,
            n: 0,
            compressed,
            limits,
            hit,
        }
    }
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.hit.get().is_some() {
            return Err(io::Error::other("stopped at a cap"));
        }
        crate::host::interrupt::check().map_err(io::Error::other)?;
        let n = self.r.read(buf)?;
        self.n += n as u64;
        if let Err(cap) = check_stream(self.n, self.compressed.get(), &self.limits) {
            self.hit.set(Some(cap));
            return Err(io::Error::other("stopped at a cap"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_name_their_recipe_key() {
        let l = Limits::default();
        assert!(check_stream(10 << 20, 1 << 20, &l).is_ok());
        assert_eq!(check_stream(300 << 20, 1 << 20, &l), Err(Cap::Ratio));
        // Small streams are not judged by ratio.
        assert!(check_stream(RATIO_GRACE, 1, &l).is_ok());
        assert_eq!(
            check_stream(l.max_bytes + 1, l.max_bytes, &l),
            Err(Cap::Bytes)
        );
        assert!(Cap::Entries.message(&l).contains("[limits] max_entries"));
        let mut m = Meter::default();
        let tiny = Limits {
            max_entries: 1,
            ..l
        };
        assert!(m.entry(&tiny).is_ok());
        assert_eq!(m.entry(&tiny), Err(Cap::Entries));
    }
}
