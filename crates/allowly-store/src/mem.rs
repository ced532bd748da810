//! [`MemStore`]: the store in memory, for unit tests of other crates.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::Result;
use crate::kv::{self, KvEngine, KvRead, Pair, Space};
use crate::types::Durability;

type Tables = [BTreeMap<Vec<u8>, Vec<u8>>; Space::ALL.len()];

/// Ordered maps behind one mutex. **Not durable**: everything is lost with the process, and
/// [`Durability`] is ignored. It shares the key encoding, the op staging and the getters with
/// `RocksStore`, and passes the same conformance suite, so a test against it tests the real
/// logic. Do not use it in production.
#[derive(Default)]
pub struct MemStore {
    tables: Mutex<Tables>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic never leaves the tables half-written (mutations are staged first, then applied
        // without any fallible step), so a poisoned lock still guards consistent data.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tables = self.lock();
        let mut d = f.debug_struct("MemStore");
        for space in Space::ALL {
            d.field(space.name(), &tables[space.idx()].len());
        }
        d.finish()
    }
}

struct View<'a>(&'a Tables);

impl KvRead for View<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0[space.idx()].get(key).cloned())
    }

    fn scan(&self, space: Space, lower: &[u8], upper: Option<&[u8]>, limit: usize, reverse: bool) -> Result<Vec<Pair>> {
        // BTreeMap::range panics on an empty or inverted range; RocksDB just returns nothing.
        if upper.is_some_and(|u| u <= lower) {
            return Ok(Vec::new());
        }
        let range = self.0[space.idx()]
            .range::<[u8], _>((Bound::Included(lower), upper.map_or(Bound::Unbounded, Bound::Excluded)));
        let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse { range.rev().take(limit).map(pair).collect() } else { range.take(limit).map(pair).collect() })
    }
}

impl KvRead for MemStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        View(&self.lock()).get(space, key)
    }

    fn scan(&self, space: Space, lower: &[u8], upper: Option<&[u8]>, limit: usize, reverse: bool) -> Result<Vec<Pair>> {
        View(&self.lock()).scan(space, lower, upper, limit, reverse)
    }
}

impl KvEngine for MemStore {
    fn read<T>(&self, f: impl FnOnce(&dyn KvRead) -> Result<T>) -> Result<T> {
        f(&View(&self.lock()))
    }

    fn apply(&self, muts: kv::Mutations, _durability: Durability) -> Result<()> {
        put_all(&mut self.lock(), muts.iter());
        Ok(())
    }

    /// Reads, plans and writes under the one lock every write takes.
    fn apply_checked(&self, write: kv::Checked, _durability: Durability) -> Result<kv::Outcome> {
        let mut tables = self.lock();
        let plan = write.plan(|space, key| View(&tables).get(space, key))?;
        put_all(&mut tables, plan.mutations());
        Ok(plan.into_outcome())
    }
}

fn put_all<'a>(tables: &mut Tables, muts: impl IntoIterator<Item = kv::Mutation<'a>>) {
    for (space, key, value) in muts {
        let table = &mut tables[space.idx()];
        match value {
            Some(v) => table.insert(key.to_vec(), v.to_vec()),
            None => table.remove(key),
        };
    }
}
