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
//! Locking can fail when `RLIMIT_MEMLOCK` is too small or used up: every failure is logged and
//! counted (`allowly_signer_mlock_failures_total`) where it happens — master key, workspace key
//! creation, rotation and load (see `keystore`) — and with `--require-mlock` the operation is
//! refused instead (the signer does not start, or the request fails).
//!
//! The master key lives in a [`LockedBytes`] allocation from the moment it is read: it is parsed
//! from the file (read into locked memory, no `String`) or straight out of the process's
//! environment block, which is then overwritten in place ([`take_env_var`]): removing a variable
//! with `std::env::remove_var` only drops the pointer from the `environ` array, and the bytes stay
//! in the block the kernel copied onto the stack at `execve`, which is what `/proc/<pid>/environ`
//! shows. [`scrub_stack`] overwrites stack space the ciphers used after every seal/unseal.

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

/// Locks `len` bytes at `ptr` in RAM and excludes their pages from core dumps. Returns whether
/// the lock succeeded.
fn lock_region(ptr: *const u8, len: usize) -> bool {
    // SAFETY: callers pass a live heap allocation they own; mlock only pins the pages containing
    // it and does not read or write them.
    let locked = unsafe { rustix::mm::mlock(ptr as *mut c_void, len) }.is_ok();
    let (start, span) = page_span(ptr, len);
    // SAFETY: `start..start+span` covers whole pages of our own heap mapping that contain the
    // allocation; MADV_DONTDUMP only changes what a core dump would include. Failure is harmless
    // (the process is non-dumpable anyway), so the result is ignored.
    let _ = unsafe { rustix::mm::madvise(start, span, Advice::LinuxDontDump) };
    locked
}

/// `N` secret bytes in their own heap allocation, locked in RAM, excluded from core dumps, and
/// zeroed on drop. Created zeroed and locked *before* any secret is written into it, so the
/// secret never exists in unlocked memory of ours (no intermediate `String`/`Vec`).
pub struct LockedBytes<const N: usize> {
    buf: Box<[u8; N]>,
    locked: bool,
}

impl<const N: usize> std::fmt::Debug for LockedBytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedBytes").field("len", &N).field("locked", &self.locked).finish_non_exhaustive()
    }
}

impl<const N: usize> LockedBytes<N> {
    /// A zeroed, locked buffer.
    pub fn new() -> Self {
        let buf = Box::new([0u8; N]);
        let locked = lock_region(buf.as_ptr(), N);
        Self { buf, locked }
    }

    /// Whether the bytes are locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl<const N: usize> Default for LockedBytes<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> std::ops::Deref for LockedBytes<N> {
    type Target = [u8; N];
    fn deref(&self) -> &[u8; N] {
        &self.buf
    }
}

impl<const N: usize> std::ops::DerefMut for LockedBytes<N> {
    fn deref_mut(&mut self) -> &mut [u8; N] {
        &mut self.buf
    }
}

/// Secrets are zeroed on drop but their pages are never unlocked: locks do not nest, so
/// `munlock` of one secret's page would silently unlock every other secret sharing that page
/// (the allocator packs small allocations). The pages stay locked until the allocator returns
/// them to the system.
impl<const N: usize> Drop for LockedBytes<N> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// Overwrites (volatile, not optimised away) the stack space below the caller's frame that
/// cipher and key-schedule code just used, so copies of key bytes it left in its locals do not
/// linger there. Cheap (a 16 KiB memset); called after every seal/unseal and master-key read.
#[inline(never)]
pub fn scrub_stack() {
    let mut buf = [0u8; 16 * 1024];
    buf.zeroize();
    std::hint::black_box(&buf);
}

extern "C" {
    /// The C library's environment array (`NAME=value` strings, NULL-terminated).
    static mut environ: *mut *mut std::ffi::c_char;
}

/// Reads environment variable `name` *in place* and then destroys it: `read` gets a borrowed
/// view of the value's bytes where they are (no copy is made), every `name=…` entry is removed
/// from the environment array (glibc's `unsetenv`, which frees none of the strings), and the
/// bytes of each entry are then overwritten with zeros where they lie — in the block the kernel
/// copied onto the stack at `execve`, which is what `/proc/<pid>/environ` reads. Returns `None`
/// when the variable is not set.
///
/// Like `setenv`, this edits the process environment without the standard library's lock: call it
/// while the process has one thread (the signer does, before its runtime starts). The technique
/// is the one `setproctitle` implementations (PostgreSQL's `ps_status.c`, nginx's
/// `ngx_setproctitle.c`) use to reuse the argv/environ area, applied to one entry.
pub fn take_env_var<R>(name: &str, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
    let mut entries: Vec<(*mut u8, usize)> = Vec::new();
    let mut read = Some(read);
    let mut result = None;
    // SAFETY: `environ` is the C library's NULL-terminated array of NUL-terminated strings; we
    // only read it here, while no other thread can change it (see above). The value slice
    // borrowed by `read` lives in that array's strings, which nothing frees or changes until we
    // overwrite them below, after `read` returned.
    unsafe {
        let mut p = std::ptr::addr_of!(environ).read();
        if !p.is_null() {
            while !(*p).is_null() {
                let entry = std::ffi::CStr::from_ptr(*p).to_bytes();
                if let Some(value) = entry.strip_prefix(name.as_bytes()).and_then(|r| r.strip_prefix(b"=")) {
                    if let Some(read) = read.take() {
                        result = Some(read(value));
                    }
                    entries.push(((*p).cast::<u8>(), entry.len()));
                }
                p = p.add(1);
            }
        }
    }
    if entries.is_empty() {
        return None;
    }
    std::env::remove_var(name);
    for (ptr, len) in entries {
        for i in 0..len {
            // SAFETY: `ptr..ptr+len` is the entry string found above (no longer referenced by
            // the environment array); it is writable memory (the initial stack block, or a
            // `setenv` allocation that glibc never frees).
            unsafe { std::ptr::write_volatile(ptr.add(i), 0) };
        }
    }
    result
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
        let locked = lock_region((&*key as *const SigningKey).cast::<u8>(), std::mem::size_of::<SigningKey>());
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
        // Overwrite in place (the old value's Drop zeroizes its secret).
        // Not unlocked afterwards: see `LockedBytes`'s `Drop`.
        *self.key = SigningKey::from_bytes(&[0u8; 32]);
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

    #[test]
    fn locked_bytes_start_zeroed_and_lock() {
        let mut b = LockedBytes::<32>::new();
        assert_eq!(*b, [0u8; 32]);
        b[0] = 1;
        assert_eq!(b[0], 1);
        // The test process has the default RLIMIT_MEMLOCK (8 MiB or more): one page locks.
        assert!(b.is_locked());
        assert!(!format!("{b:?}").contains('1'));
    }
}
