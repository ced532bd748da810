//! The reasons below the process to fail closed, as a closed set of stable codes (problem
//! `code`, `/readyz` cause, metric label). A leaf: errors, metrics and the health state all
//! name these, so they stand below all three.

use allowly_store::StoreError;

/// A reason to fail closed that is not the signer being unreachable. The set is closed: each
/// code is a problem code and a metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fault {
    /// The data volume is below `--min-free-disk`, or a store write failed because the device
    /// is full.
    StorageFull,
    /// A store write failed with a device error (EIO and the like).
    StorageFailed,
    /// A networked store (PostgreSQL) could not be reached or did not answer in time.
    StorageUnavailable,
    /// Synced store writes take longer than half of `--commit-timeout-ms` (one has been
    /// running that long, or the last one took that long): a request arriving now would wait
    /// for it and then for its own, and would likely time out with its outcome unknown, so it
    /// is refused at once instead, with nothing written.
    StorageSlow,
    /// The signer answered, repeatedly, that it cannot make its journal durable.
    SignerStorageFailed,
    /// The oldest unsigned receipt is older than `--max-unsigned-age-ms`.
    SigningBacklog,
}

impl Fault {
    /// Every fault, in the order `/readyz` lists them.
    pub const ALL: [Fault; 6] = [
        Fault::StorageFull,
        Fault::StorageFailed,
        Fault::StorageUnavailable,
        Fault::StorageSlow,
        Fault::SignerStorageFailed,
        Fault::SigningBacklog,
    ];

    /// The stable code: problem `code`, `/readyz` cause and metric label.
    pub fn code(self) -> &'static str {
        match self {
            Self::StorageFull => "storage_full",
            Self::StorageFailed => "storage_failed",
            Self::StorageUnavailable => "storage_unavailable",
            Self::StorageSlow => "storage_slow",
            Self::SignerStorageFailed => "signer_storage_failed",
            Self::SigningBacklog => "signing_backlog",
        }
    }

    /// What a client is told (no paths, no sizes: those are in the log and `/readyz`).
    pub fn public_message(self) -> &'static str {
        match self {
            Self::StorageFull => "the data volume is (nearly) full; nothing was decided or changed",
            Self::StorageFailed => "the data volume failed a write; nothing was decided or changed",
            Self::StorageUnavailable => "the database cannot be reached; nothing was decided or changed",
            Self::StorageSlow => {
                "the data volume is too slow to make writes durable in time; nothing was decided or changed"
            }
            Self::SignerStorageFailed => "the signer cannot write its journal; nothing was decided or changed",
            Self::SigningBacklog => "signing is too far behind; nothing was decided or changed",
        }
    }

    /// The fault a failed store write stands for, if it is one (a full or failing device, a
    /// database out of reach).
    pub fn of_store_error(e: &StoreError) -> Option<Fault> {
        match e {
            StoreError::NoSpace(_) => Some(Self::StorageFull),
            StoreError::Io(_) => Some(Self::StorageFailed),
            StoreError::Unavailable(_) => Some(Self::StorageUnavailable),
            _ => None,
        }
    }

    /// The faults a failed store write raises ([`Fault::of_store_error`]); each stands until a
    /// probe write succeeds.
    pub(crate) const OF_WRITES: [Fault; 3] = [Fault::StorageFull, Fault::StorageFailed, Fault::StorageUnavailable];

    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}
