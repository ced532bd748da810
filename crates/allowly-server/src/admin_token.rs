//! The instance admin key file (`<data>/admin-token`, mode 0600): created once at first start,
//! replaced when the key is rotated. Either way the secret goes to a temporary file that is
//! fsynced first, then takes the file's name, and the directory is fsynced: a crash leaves the
//! old file or the new one, whole, never a torn or empty one.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Writes `secret` to `<path>.tmp` (0600, fsynced) and returns that path.
fn write_tmp(path: &Path, secret: &str) -> std::io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    Ok(tmp)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Creates the file at `path` holding `secret`; fails if it exists (never replaces a key file
/// at start).
pub fn create(path: &Path, secret: &str) -> std::io::Result<()> {
    let tmp = write_tmp(path, secret)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked?;
    sync_parent(path)
}

/// Replaces the file at `path` with one holding `secret` (after a rotation).
pub fn replace(path: &Path, secret: &str) -> std::io::Result<()> {
    let tmp = write_tmp(path, secret)?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn created_once_then_replaced_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        create(&path, "alw_one").unwrap();
        assert!(create(&path, "alw_two").is_err(), "never replaced at start");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "alw_one\n");
        replace(&path, "alw_two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "alw_two\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }
}
