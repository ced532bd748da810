//! Process and memory hardening for key material.
//!
//! What this does: the process marks itself non-dumpable (so neither core dumps nor another
//! process of the same uid — through `/proc/<pid>/mem` or ptrace — can read its memory) and sets
//! `RLIMIT_CORE` to 0; each private key lives in its own heap allocation that is locked in RAM
//! (`mlock`, never swapped) and excluded from core dumps (`MADV_DONTDUMP`), and is overwritten
//! with zeros when the key is dropped.
//!
//! What it cannot promise (honestly): `ed25519-dalek` derives the expanded secret scalar on the
//! stack for each signature and zeroizes it afterwards, but stack pages are not locked, so a
//! copy may briefly exist in unlocked memory; the kernel may hold key bytes in pipe or socket
//! buffers only if we ever sent them (we never do); root (or `CAP_SYS_PTRACE`) can still read the
//! process; zeroization cannot reach copies the compiler made in registers or spilled temporaries.
//! Locking can fail when `RLIMIT_MEMLOCK` is too small: by default that is logged and counted
//! (`allowly_signer_mlock_failures_total`); `--require-mlock` makes it fatal.

#![allow(unsafe_code)] // mlock/madvise take raw pointers; each call is justified below.

use std::ffi::c_void;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rustix::mm::Advice;
use zeroize::Zeroize;

/// Makes the process non-dumpable and disables core files. Call first thing in `main`.
pub fn harden_process() -> std::io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit { current: Some(0), maximum: Some(0) },
    )?;
    Ok(())
}

/// Whether the process is currently non-dumpable (for tests and the start-up log).
pub fn is_non_dumpable() -> bool {
    matches!(rustix::process::dumpable_behavior(), Ok(rustix::process::DumpableBehavior::NotDumpable))
}

/// An Ed25519 signing key in a locked, dump-excluded allocation, zeroed on drop. It offers
/// signing and the public key, and no way to read the private bytes back out.
pub struct LockedSigningKey {
    key: Box<SigningKey>,
    locked: bool,
}

impl std::fmt::Debug for LockedSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even in debug output.
        f.debug_struct("LockedSigningKey").field("public", &self.key.verifying_key()).finish_non_exhaustive()
    }
}

fn page_span(ptr: *const u8, len: usize) -> (*mut c_void, usize) {
    let page = rustix::param::page_size();
    let start = (ptr as usize) & !(page - 1);
    let end = (ptr as usize + len).div_ceil(page) * page;
    (start as *mut c_void, end - start)
}

impl LockedSigningKey {
    /// Builds the key from its 32-byte seed and wipes the caller's copy of the seed.
    pub fn from_seed(seed: &mut [u8; 32]) -> Self {
        let key = Box::new(SigningKey::from_bytes(seed));
        seed.zeroize();
        let ptr = (&*key as *const SigningKey).cast::<u8>();
        let len = std::mem::size_of::<SigningKey>();
        // SAFETY: `ptr..ptr+len` is the live heap allocation owned by `key`; mlock only pins
        // the pages containing it and does not read or write them.
        let locked = unsafe { rustix::mm::mlock(ptr as *mut c_void, len) }.is_ok();
        let (start, span) = page_span(ptr, len);
        // SAFETY: `start..start+span` covers whole pages of our own heap mapping that contain
        // the key; MADV_DONTDUMP only changes what a core dump would include. Failure is harmless
        // (the process is non-dumpable anyway), so the result is ignored.
        let _ = unsafe { rustix::mm::madvise(start, span, Advice::LinuxDontDump) };
        Self { key, locked }
    }

    /// Whether the key's memory is locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Signs `msg`. Only the signer's own code calls this, and only with checkpoint note text.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    /// The key itself, for `allowly_receipt::note::sign_note` (which never stores it).
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

impl Drop for LockedSigningKey {
    fn drop(&mut self) {
        // Overwrite in place (the old value's Drop zeroizes its secret) before unlocking, so the
        // pages never become swappable while they still hold the key.
        *self.key = SigningKey::from_bytes(&[0u8; 32]);
        if self.locked {
            let ptr = (&*self.key as *const SigningKey).cast::<u8>();
            // SAFETY: same live allocation as in `from_seed`.
            let _ = unsafe { rustix::mm::munlock(ptr as *mut c_void, std::mem::size_of::<SigningKey>()) };
        }
    }
}

/// 32 bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_key_signs_like_a_plain_key() {
        let mut seed = [7u8; 32];
        let plain = SigningKey::from_bytes(&seed);
        let locked = LockedSigningKey::from_seed(&mut seed);
        assert_eq!(seed, [0u8; 32], "the caller's seed copy is wiped");
        assert_eq!(locked.verifying_key(), plain.verifying_key());
        assert_eq!(locked.sign(b"m"), plain.sign(b"m"));
        assert!(!format!("{locked:?}").contains("07070707"));
    }
}
