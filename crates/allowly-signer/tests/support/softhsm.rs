//! A SoftHSM2 of the test process's own: a config file whose token directory is a fresh temp
//! dir, every token a test binary needs initialised up front (a process sees only the tokens
//! that existed when it first loaded the module), and `SOFTHSM2_CONF` set for this process and
//! every child it starts. Debian's `softhsm2` package provides the module and `softhsm2-util`
//! (`scripts/setup.sh` installs it); a machine without them fails these tests, saying so.
//!
//! Shared by the signer's and the server's PKCS#11 tests (the server's include it by path).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every token's user PIN.
pub const USER_PIN: &str = "4321-user-pin";
/// Every token's security officer PIN.
pub const SO_PIN: &str = "8765-so-pin";

/// Where Debian and others put the SoftHSM2 module.
const MODULE_PATHS: [&str; 4] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The test process's SoftHSM2.
#[derive(Debug)]
pub struct SoftHsm {
    /// Holds `softhsm2.conf`, `tokens/` and PIN files.
    pub root: PathBuf,
    pub module: PathBuf,
    pub labels: Vec<String>,
}

static HSM: OnceLock<SoftHsm> = OnceLock::new();

/// The module: `ALLOWLY_TEST_PKCS11_MODULE`, else the first of the usual paths that exists.
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ALLOWLY_TEST_PKCS11_MODULE") {
        return PathBuf::from(p);
    }
    MODULE_PATHS.iter().map(PathBuf::from).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("no SoftHSM2 module at {MODULE_PATHS:?}: install Debian's softhsm2 (./scripts/setup.sh does)")
    })
}

/// The SoftHSM2 with one initialised token per label in `labels` (the first call decides; every
/// later call must ask for a subset).
pub fn softhsm(labels: &[&str]) -> &'static SoftHsm {
    softhsm_owned_by(labels, None)
}

/// [`softhsm`] whose token files belong to `owner` (a signer running as its own user must read
/// and write them); the directory is under /tmp and traversable (mode 0711), because such a
/// signer cannot enter root's home, where cargo's target directory is.
pub fn softhsm_owned_by(labels: &[&str], owner: Option<u32>) -> &'static SoftHsm {
    let hsm = HSM.get_or_init(|| {
        remove_dead_fixtures();
        let root = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("softhsm dir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711)).expect("chmod softhsm dir");
        let tokens = root.join("tokens");
        std::fs::create_dir_all(&tokens).expect("tokens dir");
        let conf = root.join("softhsm2.conf");
        let text =
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display());
        std::fs::write(&conf, text).expect("softhsm2.conf");
        // Before any thread of this process loads the module or starts a child that does.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        for label in labels {
            let out = Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", USER_PIN])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .unwrap_or_else(|e| panic!("softhsm2-util: {e}: install Debian's softhsm2 (./scripts/setup.sh does)"));
            assert!(
                out.status.success(),
                "softhsm2-util --init-token {label}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(uid) = owner {
            chown_tree(&tokens, uid);
        }
        SoftHsm { root, module: module_path(), labels: labels.iter().map(|l| (*l).to_owned()).collect() }
    });
    for l in labels {
        assert!(hsm.labels.iter().any(|h| h == l), "token {l} was not set up first (set up: {:?})", hsm.labels);
    }
    hsm
}

/// Names the fixture directory, with the pid of the test process that made it.
const PREFIX: &str = "allowly-softhsm-";

/// Removes fixture directories of test processes that are gone (statics are never dropped, so
/// a fixture cannot remove its own).
fn remove_dead_fixtures() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), None).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read dir") {
            chown_tree(&e.expect("entry").path(), uid);
        }
    }
}

impl SoftHsm {
    /// A PIN file holding `pin` (mode 0600) in `dir`.
    pub fn pin_file(&self, dir: &Path, name: &str, pin: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("{pin}\n")).expect("pin file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod pin file");
        p
    }

    /// The directory SoftHSM2 keeps token `label` in (one per token under `tokens/`, the label
    /// in its `token.object`, blank-padded to 32 bytes). Moving it away is a token pulled out:
    /// the module answers for it no more until it is back and the module initialised again.
    pub fn token_dir(&self, label: &str) -> PathBuf {
        let padded = format!("{label:<32}").into_bytes();
        std::fs::read_dir(self.root.join("tokens"))
            .expect("tokens dir")
            .map(|e| e.expect("entry").path())
            .find(|p| {
                std::fs::read(p.join("token.object")).is_ok_and(|b| b.windows(32).any(|w| w == padded.as_slice()))
            })
            .unwrap_or_else(|| panic!("no token directory for {label}"))
    }

    /// Moves the key objects of token `label` — SoftHSM2's object files other than the token's
    /// own — to `to`, and returns their names: the token still answers (its label and login
    /// stay), without the keys, until they are moved back into [`SoftHsm::token_dir`].
    pub fn move_key_objects(&self, label: &str, to: &Path) -> Vec<std::ffi::OsString> {
        let home = self.token_dir(label);
        std::fs::create_dir_all(to).expect("objects dir");
        let moved: Vec<std::ffi::OsString> = std::fs::read_dir(&home)
            .expect("token dir")
            .map(|e| e.expect("entry").file_name())
            .filter(|n| n.to_str().is_some_and(|n| n.ends_with(".object") && n != "token.object"))
            .collect();
        for n in &moved {
            std::fs::rename(home.join(n), to.join(n)).expect("move an object file");
        }
        moved
    }

    /// `--keystore pkcs11 --pkcs11-module M --pkcs11-token-label L --pkcs11-pin-file F`.
    pub fn signer_args(&self, label: &str, pin_file: &Path) -> Vec<String> {
        vec![
            "--keystore".into(),
            "pkcs11".into(),
            "--pkcs11-module".into(),
            self.module.display().to_string(),
            "--pkcs11-token-label".into(),
            label.into(),
            "--pkcs11-pin-file".into(),
            pin_file.display().to_string(),
        ]
    }
}
