//! The conformance suite every [`Store`](crate::Store) implementation runs (feature
//! `conformance`: test support, never enabled by a production build).
//!
//! The engine's and the webhooks' tests run on `MemStore`, the server on `RocksStore`
//! (`allowly-store-rocks`), and a networked store is planned: they are interchangeable only as
//! far as they behave alike, which is what these cases pin down. The suite lives here, beside
//! the trait, so that each implementation's crate runs the same cases from its own tests
//! without this crate depending on any of them:
//!
//! ```
//! use allowly_store::conformance::{self, Fixture};
//! use allowly_store::MemStore;
//!
//! /// An empty store for one case (for a store on disk, its temporary directory goes in `keep`).
//! fn fresh() -> Fixture<MemStore> {
//!     conformance::mem()
//! }
//!
//! mod suite {
//!     allowly_store::conformance_tests!(kv_engine: super::fresh);
//! }
//! # fn main() {}
//! ```
//!
//! - `conformance_tests!(store: fresh)`: one `#[test]` per case of [`cases`] and of [`leases`]
//!   (membership, leases, fenced writes), for any `Store`.
//! - `conformance_tests!(kv_engine: fresh)`: those, plus the cases of [`corruption`], which
//!   write bytes no op would produce and so need a [`KvEngine`](crate::kv::KvEngine).
//! - [`agrees_with_mem_store`]: random op sequences give the same results (errors included)
//!   and the same answer from every getter as on `MemStore`.
//!
//! `fresh` makes an empty store for one case: a [`Fixture`].
#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test

pub mod cases;
pub mod corruption;
mod equivalence;
pub mod leases;
pub mod records;

pub use equivalence::agrees_with_mem_store;

use crate::MemStore;

/// A fresh, empty store for one case, and what must outlive it (its temporary directory, say).
/// Fields drop in declaration order: the store is closed before `keep` goes.
#[derive(Debug)]
pub struct Fixture<S, K = ()> {
    pub store: S,
    pub keep: K,
}

/// An empty [`MemStore`].
pub fn mem() -> Fixture<MemStore> {
    Fixture { store: MemStore::new(), keep: () }
}

/// One `#[test]` per conformance case, each on a store of its own made by `$fresh` (a function
/// returning a [`Fixture`](crate::conformance::Fixture)); see the [module docs](crate::conformance).
#[macro_export]
macro_rules! conformance_tests {
    (store: $fresh:path) => {
        $crate::conformance_tests!(@cases $fresh; cases:
            workspaces_and_api_keys,
            authorizations,
            receipts_by_id_index_and_range,
            trail_pagination,
            trail_head_is_derived_from_the_trail,
            unsigned_leaves,
            write_groups,
            nodes_checkpoints_and_log_meta,
            low_nodes_come_from_receipts,
            tenant_isolation,
            invalid_ids_write_nothing,
            empty_batch_and_buffered_writes,
            concurrent_writers,
            documents,
            cosignatures_and_witness_heads,
            workspaces_behind_a_witness,
            works_as_a_trait_object,
        );
        $crate::conformance_tests!(@cases $fresh; leases:
            membership,
            lease_lifecycle,
            bulk_renewal_and_release,
            epochs_only_grow,
            fenced_writes,
            fenced_groups,
            one_owner_per_epoch,
        );
    };
    (kv_engine: $fresh:path) => {
        $crate::conformance_tests!(store: $fresh);
        $crate::conformance_tests!(@cases $fresh; corruption:
            every_getter_reports_corruption,
            mangled_receipts_never_panic,
        );
    };
    (@cases $fresh:path; $module:ident: $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fixture: $crate::conformance::Fixture<_, _> = $fresh();
                $crate::conformance::$module::$case(&fixture.store);
            }
        )*
    };
}
