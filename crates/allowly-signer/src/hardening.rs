//! Process and memory hardening for key material.
//!
//! What this does: the process marks itself non-dumpable (so neither core dumps nor another
//! process of the same uid — through `/proc/<pid>/mem` or ptrace — can read its memory) and sets
//! `RLIMIT_CORE` to 0; every private key (and the master key, and a PKCS#11 PIN) lives in a slot
//! of a [`pool`] of pages that hold secrets only, locked in RAM (`mlock`, never swapped) and
//! excluded from core dumps (`MADV_DONTDUMP`); a slot is overwritten with zeros when its secret
//! is dropped, and a page is unlocked and unmapped when its last secret goes (an idle workspace
//! unloaded, see `registry`).
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

#![allow(unsafe_code)] // mmap/mlock/madvise and the pool's slots are raw memory; each use is justified below.

use std::ptr::NonNull;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
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

/// An Ed25519 signing key in a slot of the [`pool`] of locked, dump-excluded pages, wiped when
/// dropped. It offers signing and the public key, and no way to read the private bytes back out.
pub struct LockedSigningKey {
    key: NonNull<SigningKey>,
    locked: bool,
}

// SAFETY: the key uniquely owns its slot (nothing else points into it); `&self` only reads it.
unsafe impl Send for LockedSigningKey {}
// SAFETY: as above: shared access is read-only (`SigningKey` is `Sync`).
unsafe impl Sync for LockedSigningKey {}

impl std::fmt::Debug for LockedSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even in debug output.
        f.debug_struct("LockedSigningKey").field("public", &self.verifying_key()).finish_non_exhaustive()
    }
}

/// `N` secret bytes in a slot of the [`pool`] of locked, dump-excluded pages, zeroed when
/// dropped. Created zeroed and locked *before* any secret is written into it, so the secret
/// never exists in unlocked memory of ours (no intermediate `String`/`Vec`).
pub struct LockedBytes<const N: usize> {
    buf: NonNull<[u8; N]>,
    locked: bool,
}

// SAFETY: the buffer uniquely owns its slot; `&self` only reads it, `&mut self` writes it.
unsafe impl<const N: usize> Send for LockedBytes<N> {}
// SAFETY: as above.
unsafe impl<const N: usize> Sync for LockedBytes<N> {}

impl<const N: usize> std::fmt::Debug for LockedBytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedBytes").field("len", &N).field("locked", &self.locked).finish_non_exhaustive()
    }
}

impl<const N: usize> LockedBytes<N> {
    /// A zeroed, locked buffer.
    pub fn new() -> Self {
        // A slot of at least N bytes, zeroed, aligned to 64 (more than `[u8; N]` needs).
        let (slot, locked) = pool::alloc(N);
        Self { buf: slot.cast(), locked }
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
        // SAFETY: `buf` is a live slot of at least N initialised (zeroed, then written) bytes
        // that this value owns until it drops.
        unsafe { self.buf.as_ref() }
    }
}

impl<const N: usize> std::ops::DerefMut for LockedBytes<N> {
    fn deref_mut(&mut self) -> &mut [u8; N] {
        // SAFETY: as in `deref`; `&mut self` makes the access unique.
        unsafe { self.buf.as_mut() }
    }
}

/// Zeroed and handed back to the pool, which unlocks and unmaps a page once it holds no
/// secret at all (never while another secret shares it: see [`pool`]).
impl<const N: usize> Drop for LockedBytes<N> {
    fn drop(&mut self) {
        pool::free(self.buf.cast(), N);
    }
}

/// Where every secret of the signer lives: pages mapped for secrets alone, each locked in RAM
/// (`mlock`), excluded from core dumps (`MADV_DONTDUMP`) and not inherited by a forked child
/// (`MADV_WIPEONFORK`), carved into equal slots (64 bytes and up, a power of two: a workspace
/// key takes 256, so 16 share a 4 KiB page).
///
/// Why a pool of its own rather than the allocator: locks do not nest, so unlocking one secret's
/// page in the general heap would silently unlock every other secret (or anything) sharing that
/// page, and a secret freed there leaves a locked page behind that nothing accounts for. Here a
/// page holds secrets only, and it is unlocked and unmapped exactly when its last secret is
/// freed. So unloading idle workspaces gives their locked memory (and the memory mappings the
/// locks split off) back to the system, and locked memory follows the keys *loaded*, one page
/// per 16, instead of growing by a page per key ever loaded. Every slot is zeroed when it is
/// freed, before anything else can be put there.
pub mod pool {
    use std::collections::BTreeMap;
    use std::ffi::c_void;
    use std::ptr::NonNull;
    use std::sync::{Mutex, MutexGuard};

    use rustix::mm::Advice;
    use zeroize::Zeroize as _;

    /// Smallest slot; every slot is aligned to its own size, so to at least this.
    pub const MIN_SLOT: usize = 64;
    /// Slots per mapping at most (one `u64` of in-use bits).
    const MAX_SLOTS: usize = 64;

    /// One mapping of whole pages, carved into `len / slot` slots.
    struct Mapping {
        len: usize,
        slot: usize,
        /// Bit `i` set: slot `i` holds a secret.
        used: u64,
        locked: bool,
    }

    impl Mapping {
        fn full(&self) -> bool {
            self.used.count_ones() as usize == self.len / self.slot
        }
    }

    /// The pool's bookkeeping: mappings by base address.
    #[derive(Default)]
    pub(crate) struct Pool {
        maps: BTreeMap<usize, Mapping>,
    }

    /// What the pool holds (the `allowly_signer_locked_key_*` gauges).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Usage {
        /// Bytes mapped for secrets.
        pub mapped_bytes: usize,
        /// Of those, the bytes locked in RAM.
        pub locked_bytes: usize,
        /// Secrets held (slots in use).
        pub secrets: usize,
        /// Memory mappings.
        pub mappings: usize,
    }

    static POOL: Mutex<Pool> = Mutex::new(Pool { maps: BTreeMap::new() });

    fn global() -> MutexGuard<'static, Pool> {
        // Nothing under this lock panics, so it is never poisoned; recover rather than unwrap.
        POOL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A zeroed slot of at least `size` bytes, aligned to 64, and whether it is locked in RAM.
    /// Aborts like the global allocator if the system has no memory to map.
    pub(crate) fn alloc(size: usize) -> (NonNull<u8>, bool) {
        global().alloc(size)
    }

    /// Zeroes and takes back a slot that [`alloc`]`(size)` gave.
    pub(crate) fn free(slot: NonNull<u8>, size: usize) {
        global().free(slot, size);
    }

    /// What the pool holds now.
    pub fn usage() -> Usage {
        global().usage()
    }

    fn lock(base: usize, len: usize) -> bool {
        // SAFETY: `base..base+len` is a whole mapping of ours; mlock pins its pages and neither
        // reads nor writes them.
        unsafe { rustix::mm::mlock(base as *mut c_void, len) }.is_ok()
    }

    impl Pool {
        /// The slot size and mapping length for secrets of `size` bytes.
        fn class(size: usize, page: usize) -> (usize, usize) {
            let slot = size.max(MIN_SLOT).next_power_of_two();
            let len = slot.div_ceil(page) * page;
            // On pages larger than 64 × 64 bytes, slots grow so that at most 64 fill a page.
            (slot.max(len / MAX_SLOTS), len)
        }

        pub(crate) fn alloc(&mut self, size: usize) -> (NonNull<u8>, bool) {
            let (slot, len) = Self::class(size, rustix::param::page_size());
            let base = match self.maps.iter().find(|(_, m)| m.slot == slot && !m.full()) {
                Some((&base, _)) => base,
                None => {
                    let base = map(len);
                    self.maps.insert(base, Mapping { len, slot, used: 0, locked: lock(base, len) });
                    base
                }
            };
            let Some(m) = self.maps.get_mut(&base) else { unreachable!("found or inserted above") };
            if !m.locked {
                // RLIMIT_MEMLOCK may have room again (secrets were freed since).
                m.locked = lock(base, m.len);
            }
            let i = (!m.used).trailing_zeros() as usize;
            m.used |= 1 << i;
            let addr = base + i * m.slot;
            // A mapping never starts at address 0, and `addr` is inside it.
            let ptr = NonNull::new(addr as *mut u8).unwrap_or_else(|| unreachable!("a slot of a mapping"));
            (ptr, m.locked)
        }

        pub(crate) fn free(&mut self, slot: NonNull<u8>, size: usize) {
            let addr = slot.as_ptr() as usize;
            let Some((&base, m)) = self.maps.range_mut(..=addr).next_back() else {
                unreachable!("a secret's slot is in a mapping of the pool");
            };
            debug_assert!(addr < base + m.len && (addr - base).is_multiple_of(m.slot) && size <= m.slot);
            // SAFETY: the slot is `m.slot` bytes of our own writable mapping, and its owner is
            // being dropped: nothing refers to it any more.
            unsafe { std::slice::from_raw_parts_mut(slot.as_ptr(), m.slot) }.zeroize();
            m.used &= !(1 << ((addr - base) / m.slot));
            if m.used == 0 {
                let len = m.len;
                let locked = m.locked;
                self.maps.remove(&base);
                unmap(base, len, locked);
            }
        }

        pub(crate) fn usage(&self) -> Usage {
            let mut u = Usage { mappings: self.maps.len(), ..Usage::default() };
            for m in self.maps.values() {
                u.mapped_bytes += m.len;
                u.locked_bytes += if m.locked { m.len } else { 0 };
                u.secrets += m.used.count_ones() as usize;
            }
            u
        }
    }

    /// Only a test's own pool is ever dropped (the global one lasts as long as the process).
    impl Drop for Pool {
        fn drop(&mut self) {
            for (base, m) in std::mem::take(&mut self.maps) {
                // SAFETY: the whole mapping is ours, and the pool (so every slot's owner) is gone.
                unsafe { std::slice::from_raw_parts_mut(base as *mut u8, m.len) }.zeroize();
                unmap(base, m.len, m.locked);
            }
        }
    }

    /// Maps `len` bytes of fresh (zeroed) anonymous memory for secrets.
    fn map(len: usize) -> usize {
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a new private anonymous mapping at an address the kernel picks: it aliases
        // nothing of ours.
        let mapped = unsafe {
            rustix::mm::mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE)
        };
        let Ok(base) = mapped else {
            // What the global allocator does when the system has no memory left.
            let layout = std::alloc::Layout::from_size_align(len, MIN_SLOT);
            std::alloc::handle_alloc_error(layout.unwrap_or_else(|_| unreachable!("a page-sized layout")));
        };
        for advice in [Advice::LinuxDontDump, Advice::LinuxWipeOnFork] {
            // SAFETY: the whole mapping just made; these only change what a core dump or a
            // forked child gets. Failure is harmless (the process is non-dumpable and forks no
            // child while it holds secrets), so it is ignored.
            let _ = unsafe { rustix::mm::madvise(base, len, advice) };
        }
        base as usize
    }

    /// Unlocks and unmaps a mapping whose slots are all zero and free.
    fn unmap(base: usize, len: usize, locked: bool) {
        // SAFETY: `base..base+len` is a whole mapping of ours that holds no secret any more and
        // that nothing refers to (its last slot was just freed, or its pool is being dropped).
        unsafe {
            if locked {
                let _ = rustix::mm::munlock(base as *mut c_void, len);
            }
            let _ = rustix::mm::munmap(base as *mut c_void, len);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn slots_share_pages_and_a_page_goes_back_only_with_its_last_secret() {
            let page = rustix::param::page_size();
            let mut pool = Pool::default();
            let per_page = page / 256;
            let keys: Vec<_> = (0..per_page + 1).map(|_| pool.alloc(224)).collect();
            assert!(keys.iter().all(|&(_, locked)| locked), "the test process may lock a few pages");
            let u = pool.usage();
            assert_eq!((u.mappings, u.secrets, u.locked_bytes), (2, per_page + 1, 2 * page));
            // Secrets written, then all but one freed: the slots read as zero at once, and
            // their page stays mapped and locked for the one still in it.
            for &(p, _) in &keys {
                // SAFETY (test): a live slot of 256 bytes.
                unsafe { p.as_ptr().write_bytes(0xA5, 224) };
            }
            for &(p, _) in &keys[1..per_page] {
                pool.free(p, 224);
                // SAFETY (test): the mapping is still there (slot 0 keeps it); reading it is what
                // an attacker with the process's memory could do.
                let left = unsafe { std::slice::from_raw_parts(p.as_ptr(), 256) };
                assert!(left.iter().all(|&b| b == 0), "a freed slot still holds its secret");
            }
            assert_eq!(pool.usage().mappings, 2);
            pool.free(keys[0].0, 224);
            assert_eq!(pool.usage().mappings, 1, "a page with no secret left is unmapped");
            pool.free(keys[per_page].0, 224);
            assert_eq!(pool.usage(), Usage::default());
        }

        #[test]
        fn sizes_get_their_own_classes_and_alignment() {
            let page = rustix::param::page_size();
            let mut pool = Pool::default();
            let small = pool.alloc(32).0;
            let key = pool.alloc(224).0;
            let big = pool.alloc(page + 1).0;
            for (p, align) in [(small, 64), (key, 256), (big, page)] {
                assert_eq!(p.as_ptr() as usize % align, 0);
            }
            assert_eq!(pool.usage().mappings, 3, "one class per mapping");
            assert_eq!(pool.usage().mapped_bytes, 2 * page + 2 * page);
        }
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

impl LockedSigningKey {
    /// Builds the key from its 32-byte seed, in its locked slot, and wipes the caller's copy of
    /// the seed.
    pub fn from_seed(seed: &mut [u8; 32]) -> Self {
        /// In a frame of its own, so that [`scrub_stack`] clears what key expansion left on the
        /// stack.
        #[inline(never)]
        fn build(seed: &[u8; 32], dst: NonNull<SigningKey>) {
            // SAFETY: `dst` is a free slot of at least `size_of::<SigningKey>()` bytes, aligned
            // to 64 (checked below); `write` neither reads nor drops its (zeroed) contents.
            unsafe { dst.as_ptr().write(SigningKey::from_bytes(seed)) }
        }
        const { assert!(std::mem::align_of::<SigningKey>() <= pool::MIN_SLOT) };
        let (slot, locked) = pool::alloc(std::mem::size_of::<SigningKey>());
        let key = slot.cast::<SigningKey>();
        build(seed, key);
        seed.zeroize();
        scrub_stack();
        Self { key, locked }
    }

    /// Whether the key's memory is locked in RAM.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Signs `msg`. Only the signer's own code calls this, and only with checkpoint note text.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.signing_key().sign(msg)
    }

    /// The key itself, for `allowly_receipt::note::sign_note` (which never stores it).
    pub fn signing_key(&self) -> &SigningKey {
        // SAFETY: `key` points to the `SigningKey` written in `from_seed`, alive until drop.
        unsafe { self.key.as_ref() }
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key().verifying_key()
    }
}

impl Drop for LockedSigningKey {
    fn drop(&mut self) {
        // SAFETY: the key was written in `from_seed` and is dropped once, here (its own `Drop`
        // zeroizes the secret); the slot is then freed, zeroed whole, and never read again.
        unsafe { std::ptr::drop_in_place(self.key.as_ptr()) };
        pool::free(self.key.cast(), std::mem::size_of::<SigningKey>());
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
