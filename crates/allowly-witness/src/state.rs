//! The witness's memory: for each log, the (size, root) of the last checkpoint it cosigned.
//!
//! One file per log, `<dir>/state/<hex SHA-256(origin)>` (origins contain '/'), holding the
//! unsigned checkpoint text `origin\nsize\nroot\n` (C2SP tlog-checkpoint, no extension line).
//! A write is crash-safe: temporary file, fsync, rename over the old file, fsync of the
//! directory — after a crash the file is the old state or the new one, never a mix, and a
//! cosignature is only released after the new state is durable. A file that cannot be read or
//! names another origin stops the witness at start (fail closed: a witness that forgot a head
//! could cosign a fork of it).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use allowly_receipt::merkle::Hash;
use allowly_receipt::note::Checkpoint;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// The last cosigned checkpoint of one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub root: Hash,
}

/// The state directory, `<dir>/state`.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating it if needed, fsynced into its parent) the state directory under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let state = dir.join("state");
        if !state.is_dir() {
            std::fs::create_dir_all(&state)?;
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(Self { dir: state })
    }

    fn path(&self, origin: &str) -> PathBuf {
        self.dir.join(hex::encode(Sha256::digest(origin.as_bytes())))
    }

    /// The recorded head of `origin`, `None` if the witness never cosigned for it.
    pub fn load(&self, origin: &str) -> Result<Option<Head>> {
        let path = self.path(origin);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Setup(format!("{}: {e}", path.display()))),
        };
        let cp = Checkpoint::parse(&text).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
        if cp.origin != origin || !cp.extensions.is_empty() {
            return Err(Error::Setup(format!("{}: not the state of {origin:?}", path.display())));
        }
        Ok(Some(Head { size: cp.size, root: cp.root }))
    }

    /// Records `head` for `origin` durably (see the module doc); returns only once it is.
    pub fn store(&self, origin: &str, head: Head) -> Result<()> {
        let text = Checkpoint { origin: origin.to_owned(), size: head.size, root: head.root, extensions: vec![] }
            .to_text()
            .map_err(|_| Error::Internal("origin cannot be written as a checkpoint"))?;
        let path = self.path(origin);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn store_load_and_refuse_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(s.load("a/b").unwrap(), None);
        let h = Head { size: 9, root: [3; 32] };
        s.store("a/b", h).unwrap();
        assert_eq!(StateDir::open(dir.path()).unwrap().load("a/b").unwrap(), Some(h));
        assert_eq!(s.load("a/c").unwrap(), None);
        // Another log's state under this log's name is refused, as is garbage.
        std::fs::copy(s.path("a/b"), s.path("a/c")).unwrap();
        assert!(matches!(s.load("a/c"), Err(Error::Setup(_))));
        std::fs::write(s.path("a/c"), "junk").unwrap();
        assert!(matches!(s.load("a/c"), Err(Error::Setup(_))));
    }
}
