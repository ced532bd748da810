//! The witness's own Ed25519 key: `<dir>/witness.key`, mode 0600, one line
//! `PRIVATE+KEY+<name>+<key id hex>+<base64(0x04 || 32-byte seed)>` — the layout of Go's
//! `golang.org/x/mod/sumdb/note` signer keys, with the cosignature/v1 type byte 0x04, so the
//! name travels with the key and the key id double-checks both.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use allowly_receipt::cosignature::{CosignerKey, ALG_COSIGNATURE_V1};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

use crate::{Error, Result};

/// The key file's name inside the witness directory.
pub const KEY_FILE: &str = "witness.key";

/// The witness's name and signing key.
#[derive(Debug)]
pub struct WitnessKey {
    pub public: CosignerKey,
    pub signing: SigningKey,
}

fn key_path(dir: &Path) -> PathBuf {
    dir.join(KEY_FILE)
}

/// Creates the directory (0700) and a new key file (0600, never overwriting one), fsynced.
pub fn init(dir: &Path, name: &str) -> Result<WitnessKey> {
    let setup = |what: &str, e: std::io::Error| Error::Setup(format!("{what}: {e}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| setup(&dir.display().to_string(), e))?;
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| Error::Setup(format!("random: {e}")))?;
    let signing = SigningKey::from_bytes(&seed);
    let public = CosignerKey::new(name, signing.verifying_key()).map_err(|e| Error::Setup(format!("name: {e}")))?;
    let mut raw = vec![ALG_COSIGNATURE_V1];
    raw.extend_from_slice(&seed);
    let line = format!("PRIVATE+KEY+{name}+{}+{}\n", hex::encode(public.key_id()), B64.encode(raw));
    let path = key_path(dir);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| setup(&path.display().to_string(), e))?;
    f.write_all(line.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| setup(&path.display().to_string(), e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| setup(&dir.display().to_string(), e))?;
    Ok(WitnessKey { public, signing })
}

/// Reads the key file written by [`init`]; refuses one that others than its owner may read
/// (as ssh does): a copied witness key is a second witness that can cosign a fork.
pub fn load(dir: &Path) -> Result<WitnessKey> {
    let path = key_path(dir);
    let mode = std::fs::metadata(&path).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?.mode();
    if mode & 0o077 != 0 {
        return Err(Error::Setup(format!(
            "{}: mode {:o}: group or others may access it (want 0600)",
            path.display(),
            mode & 0o777
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
    parse(text.trim_end_matches('\n')).map_err(|m| Error::Setup(format!("{}: {m}", path.display())))
}

fn parse(line: &str) -> Result<WitnessKey, &'static str> {
    let rest = line.strip_prefix("PRIVATE+KEY+").ok_or("not a PRIVATE+KEY+ line")?;
    let mut parts = rest.splitn(3, '+');
    let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected name+id+key");
    };
    let raw = B64.decode(b64).map_err(|_| "key is not base64")?;
    let (&alg, seed) = raw.split_first().ok_or("empty key")?;
    let seed: [u8; 32] = seed.try_into().map_err(|_| "key is not 32 bytes")?;
    if alg != ALG_COSIGNATURE_V1 {
        return Err("key type is not 0x04 (cosignature/v1)");
    }
    let signing = SigningKey::from_bytes(&seed);
    let public = CosignerKey::new(name, signing.verifying_key()).map_err(|_| "invalid name")?;
    if hex::encode(public.key_id()) != id {
        return Err("key id does not match name and key");
    }
    Ok(WitnessKey { public, signing })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn init_then_load_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("w");
        let k = init(&d, "witness.example/w1").unwrap();
        let mode = std::fs::metadata(d.join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load(&d).unwrap();
        assert_eq!(again.public, k.public);
        assert!(init(&d, "witness.example/w1").is_err(), "an existing key is never replaced");
        assert_eq!(load(&d).unwrap().public, k.public);
        // A key others can read is refused.
        std::fs::set_permissions(d.join(KEY_FILE), std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(load(&d), Err(Error::Setup(_))));
    }

    #[test]
    fn parse_refuses_tampering() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "w").unwrap();
        let line = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        let line = line.trim_end();
        assert!(parse(line).is_ok());
        assert!(parse(&line.replacen("+w+", "+v+", 1)).is_err());
        assert!(parse(&line.replacen("PRIVATE", "PUBLIC", 1)).is_err());
        assert!(parse("PRIVATE+KEY+w").is_err());
    }
}
