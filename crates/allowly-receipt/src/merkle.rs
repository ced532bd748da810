//! RFC 6962 / RFC 9162 Merkle tree hash (MTH), inclusion and consistency proofs, and a
//! [`Frontier`] (compact range) from which an append-only log computes new roots and proofs.
//!
//! # Node coordinates
//! Node `(level, index)` is the root of the complete subtree over the leaves
//! `[index * 2^level, (index + 1) * 2^level)`; level 0 holds the leaf hashes. RFC 6962 splits a
//! tree of `n` leaves at the largest power of two `k < n`, so every left child is such a complete,
//! aligned subtree, and the tree over `[0, n)` is the right-to-left fold of its *peaks*: one
//! complete subtree per set bit of `n`, largest (leftmost) first. Because of that, everything
//! here (roots, proofs, appends) is computed from complete-subtree hashes alone, which is exactly
//! what a persistent node store can hold: complete nodes never change once written.
//!
//! # Sizes
//! Tree sizes and indices are `u64` up to `u64::MAX`; all size arithmetic is overflow-checked or
//! provably bounded (noted where it matters) so that no input can make these functions panic.

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A SHA-256 output: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// SHA-256 of the empty string: the root of the empty tree (RFC 6962 §2.1, `MTH({})`).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41,
    0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Domain-separation prefixes (RFC 6962 §2.1): distinct prefixes for leaves and interior nodes
/// make it impossible to present an interior node as a leaf (second-preimage attack).
const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// The leaf hash `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// The interior node hash `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Hashes of complete, aligned subtrees: node `(level, index)` covers leaves
/// `[index * 2^level, (index + 1) * 2^level)`; level 0 is the leaf hashes.
///
/// Only complete nodes are asked for, so a store can write each node once, when it becomes
/// complete, and never update it (see [`Appended::new_nodes`]).
pub trait NodeSource {
    /// The hash of node `(level, index)`, or `Err(Error::MissingNode)` if the source does not have it.
    fn node(&self, level: u8, index: u64) -> Result<Hash>;
}

/// In-memory [`NodeSource`] over leaf hashes. It computes each requested node from its leaves on
/// demand (`2^level - 1` hashes per node, no cache): meant for tests and small trees; a
/// production store persists [`Appended::new_nodes`] instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeafList(pub Vec<Hash>);

impl NodeSource for LeafList {
    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        let missing = Error::MissingNode { level, index };
        // Every overflow below means the node lies beyond any tree this list can hold.
        let width = 1u64.checked_shl(u32::from(level)).ok_or(missing.clone())?;
        let start = index.checked_mul(width).ok_or(missing.clone())?;
        let end = start.checked_add(width).ok_or(missing.clone())?;
        let start = usize::try_from(start).map_err(|_| missing.clone())?;
        let end = usize::try_from(end).map_err(|_| missing.clone())?;
        let leaves = self.0.get(start..end).ok_or(missing)?;
        Ok(complete_subtree_hash(leaves))
    }
}

/// Hash of a complete subtree over `leaves` (length a power of two): the node a store that
/// does not keep the lowest levels recomputes from the leaf hashes. Recursion depth is at most
/// 64 because a slice is shorter than 2^64.
pub fn complete_subtree_hash(leaves: &[Hash]) -> Hash {
    match leaves {
        // Unreachable from `LeafList::node` (width >= 1); defined so the function is total.
        [] => EMPTY_ROOT,
        [one] => *one,
        _ => {
            let (left, right) = leaves.split_at(leaves.len() / 2);
            node_hash(&complete_subtree_hash(left), &complete_subtree_hash(right))
        }
    }
}

/// The decomposition of the leaf range `[start, end)` into complete aligned subtrees, one per
/// set bit of `end - start`, as `(level, index)`; forwards yields largest (leftmost) first,
/// backwards smallest (rightmost) first.
///
/// Invariant (required, not checked): `start <= end` and `start` is a multiple of
/// `2^floor(log2(end - start))`. It holds for `[0, n)` and for every right-hand subtree
/// `D[k:n]` the RFC 6962 recursion visits. Under it each yielded node is aligned, and
/// `start`/`end` only move towards each other, so nothing can overflow.
#[derive(Debug, Clone)]
struct Decomposition {
    start: u64,
    end: u64,
}

impl Decomposition {
    fn new(start: u64, end: u64) -> Self {
        Decomposition { start, end }
    }

    fn peaks(size: u64) -> Self {
        Decomposition::new(0, size)
    }
}

impl Iterator for Decomposition {
    type Item = (u8, u64);
    fn next(&mut self) -> Option<(u8, u64)> {
        let len = self.end.checked_sub(self.start).filter(|&l| l > 0)?;
        let level = 63 - len.leading_zeros(); // len > 0, so leading_zeros <= 63
        let node = (level as u8, self.start >> level);
        self.start += 1u64 << level; // <= end: the subtree lies inside [start, end)
        Some(node)
    }
}

impl DoubleEndedIterator for Decomposition {
    fn next_back(&mut self) -> Option<(u8, u64)> {
        let len = self.end.checked_sub(self.start).filter(|&l| l > 0)?;
        // len > 0, so trailing_zeros <= 63; end >= 2^level because the range holds at least
        // that subtree, so the index below is >= 0.
        let level = len.trailing_zeros();
        let node = (level as u8, (self.end >> level) - 1);
        self.end -= 1u64 << level;
        Some(node)
    }
}

/// `MTH(D[start:end])` for a range satisfying the [`Decomposition`] invariant: the fold of its
/// complete subtrees from right to left (`H(P0, H(P1, ... H(Pk-1, Pk)))`), as RFC 6962's
/// recursive definition unrolls to. The empty range hashes to [`EMPTY_ROOT`].
fn range_hash(src: &impl NodeSource, start: u64, end: u64) -> Result<Hash> {
    let mut nodes = Decomposition::new(start, end).rev();
    let Some((level, index)) = nodes.next() else {
        return Ok(EMPTY_ROOT);
    };
    let mut acc = src.node(level, index)?;
    for (level, index) in nodes {
        acc = node_hash(&src.node(level, index)?, &acc);
    }
    Ok(acc)
}

/// The largest power of two strictly less than `n`: RFC 6962's split point `k`. Needs `n >= 2`.
fn split_point(n: u64) -> u64 {
    // n - 1 >= 1, so leading_zeros <= 63.
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Root of the first `size` leaves, read from complete-subtree hashes only: the fold of the
/// peaks of `size` from right to left. `size == 0` gives [`EMPTY_ROOT`].
pub fn root_from(src: &impl NodeSource, size: u64) -> Result<Hash> {
    range_hash(src, 0, size)
}

/// RFC 9162 §2.1.3.1 inclusion proof (RFC 6962 `PATH(index, D[size])`) of leaf `index` in the
/// tree of `size` leaves, ordered bottom-up.
///
/// The RFC recursion is unrolled top-down over `D[start:start+n]`: a left subtree `D[0:k]` is a
/// single complete node; a right subtree `D[k:n]` is hashed from its decomposition. The path is
/// collected top-down and reversed at the end.
pub fn inclusion_proof(src: &impl NodeSource, index: u64, size: u64) -> Result<Vec<Hash>> {
    if index >= size {
        return Err(Error::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::with_capacity(64);
    // Invariants: 0 <= m < n, start + n <= size, start is a multiple of n's bit ceiling.
    let (mut start, mut m, mut n) = (0u64, index, size);
    while n > 1 {
        let k = split_point(n);
        if m < k {
            proof.push(range_hash(src, start + k, start + n)?);
            n = k;
        } else {
            let level = k.trailing_zeros() as u8;
            proof.push(src.node(level, start >> level)?);
            start += k;
            m -= k;
            n -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 §2.1.4.1 consistency proof (RFC 6962 `PROOF(old_size, D[new_size])`) between tree
/// sizes `old_size <= new_size`; empty when the sizes are equal or `old_size == 0`.
///
/// `SUBPROOF(m, D[n], b)` is unrolled like [`inclusion_proof`]; `have_root` is the RFC's `b`
/// (the old root is known to the verifier, so a terminal subtree equal to it is omitted).
pub fn consistency_proof(src: &impl NodeSource, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
    if old_size > new_size {
        return Err(Error::TreeSize("consistency proof from a larger to a smaller tree"));
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    let mut proof = Vec::with_capacity(64);
    // Invariants: 1 <= m <= n, start + n <= new_size, start is a multiple of n's bit ceiling.
    let (mut start, mut m, mut n, mut have_root) = (0u64, old_size, new_size, true);
    while m < n {
        let k = split_point(n); // n > m >= 1, so n >= 2
        if m <= k {
            proof.push(range_hash(src, start + k, start + n)?);
            n = k;
        } else {
            let level = k.trailing_zeros() as u8;
            proof.push(src.node(level, start >> level)?);
            start += k;
            m -= k;
            n -= k;
            have_root = false;
        }
    }
    if !have_root {
        proof.push(range_hash(src, start, start + n)?);
    }
    proof.reverse();
    Ok(proof)
}

/// RFC 9162 §2.1.3.2: verify that `leaf` (a leaf hash) is at `index` in the tree of `size`
/// leaves with root `root`.
///
/// The proof binds `index` and `size` only together with `root`: take `size` and `root` from
/// the same signed checkpoint. Work is bounded by 64 hashes whatever the proof length (a longer
/// proof fails as soon as the path reaches the root). Hashes are public, so comparisons need
/// not be constant-time.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<()> {
    if index >= size {
        return Err(Error::IndexOutOfRange { index, size });
    }
    // fn_ / sn: positions of the path node and of the last node on the same level.
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(Error::Proof("inclusion proof has too many elements"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            // On the right border a node without right sibling is promoted unchanged: skip
            // those levels (RFC 9162 §2.1.3.2 step 4.b.ii).
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(Error::Proof("inclusion proof has too few elements"));
    }
    if r != *root {
        return Err(Error::Proof("inclusion proof does not lead to the root"));
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: verify that the tree (`old_size`, `old_root`) is a prefix of the tree
/// (`new_size`, `new_root`).
///
/// Edge cases: `old_size > new_size` is `Err(TreeSize)`; equal sizes need an empty proof and
/// equal roots; `old_size == 0` needs an empty proof and `old_root == EMPTY_ROOT` (the only root
/// a tree of size 0 can have, so any other value is a false claim). Work is bounded by 64 hashes
/// per root whatever the proof length.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<()> {
    if old_size > new_size {
        return Err(Error::TreeSize("consistency from a larger to a smaller tree"));
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(Error::Proof("consistency proof from the empty tree must be empty"));
        }
        if *old_root != EMPTY_ROOT {
            return Err(Error::Proof("root of the empty tree must be EMPTY_ROOT"));
        }
        if new_size == 0 && new_root != old_root {
            return Err(Error::Proof("roots of equal-size trees differ"));
        }
        return Ok(());
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(Error::Proof("consistency proof between equal sizes must be empty"));
        }
        if old_root != new_root {
            return Err(Error::Proof("roots of equal-size trees differ"));
        }
        return Ok(());
    }
    // Now 0 < old_size < new_size. Step 1: a non-trivial proof is never empty.
    let Some((first, rest)) = proof.split_first() else {
        return Err(Error::Proof("consistency proof is empty"));
    };
    // Step 2: if old_size is a power of two the old root is itself a node of the new tree and
    // is not sent; it seeds the computation and every proof element is then a sibling.
    let (seed, path) = if old_size.is_power_of_two() { (old_root, proof) } else { (first, rest) };
    // Steps 3-4: start at the level of the largest complete subtree ending at old_size.
    let (mut fn_, mut sn) = (old_size - 1, new_size - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5: fr rebuilds the old root (left siblings only), sr the new root (all siblings).
    let (mut fr, mut sr) = (*seed, *seed);
    for c in path {
        if sn == 0 {
            return Err(Error::Proof("consistency proof has too many elements"));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(Error::Proof("consistency proof has too few elements"));
    }
    if fr != *old_root {
        return Err(Error::Proof("consistency proof does not lead to the old root"));
    }
    if sr != *new_root {
        return Err(Error::Proof("consistency proof does not lead to the new root"));
    }
    Ok(())
}

/// Compact range `[0, size)`: the hashes of the complete aligned subtrees given by the set bits
/// of `size`, largest (leftmost) first.
///
/// This is all an append-only log's signer keeps: from it alone [`Frontier::append`] computes
/// the new root and the inclusion proof of every leaf of a new batch. It is never updated
/// in place on error, so a failed append leaves it valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    peaks: Vec<Hash>,
}

/// Result of [`Frontier::append`] / [`Frontier::append_into`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Tree size before the append.
    pub old_size: u64,
    /// Tree size after the append (`old_size + leaves.len()`).
    pub new_size: u64,
    /// Root of the tree of `new_size` leaves.
    pub root: Hash,
    /// `proofs[i]` is the inclusion proof of leaf `old_size + i` in the tree of `new_size` leaves
    /// (identical to [`inclusion_proof`] for that leaf and size).
    pub proofs: Vec<Vec<Hash>>,
    /// Every complete aligned node `(level, index, hash)` of the new tree that contains at least
    /// one new leaf, level 0 (the new leaves) included, sorted by level then index. Persisting
    /// these after every append gives a store every node [`inclusion_proof`],
    /// [`consistency_proof`] and [`root_from`] will ever ask for.
    pub new_nodes: Vec<(u8, u64, Hash)>,
}

impl Appended {
    fn clear(&mut self) {
        self.old_size = 0;
        self.new_size = 0;
        self.root = EMPTY_ROOT;
        self.proofs.clear();
        self.new_nodes.clear();
    }
}

/// Where each level's new nodes sit in `Appended::new_nodes` during an append.
struct Levels {
    /// Offset in `new_nodes` of the level's first new node.
    offset: [usize; 64],
    /// Index within the level of that node: `old_size >> level`.
    first: [u64; 64],
    /// Number of new nodes on the level (0 for levels not reached).
    len: [u64; 64],
}

impl Levels {
    /// The node `(level, index)` if this append created it. The stored coordinates are compared
    /// as well, so an arithmetic slip would surface as `None` (an error), never as a wrong hash.
    fn get<'a>(&self, nodes: &'a [(u8, u64, Hash)], level: u8, index: u64) -> Option<&'a Hash> {
        let l = usize::from(level);
        let len = *self.len.get(l)?;
        let rel = index.checked_sub(*self.first.get(l)?).filter(|&r| r < len)?;
        let pos = self.offset.get(l)?.checked_add(usize::try_from(rel).ok()?)?;
        match nodes.get(pos) {
            Some((nl, ni, h)) if *nl == level && *ni == index => Some(h),
            _ => None,
        }
    }
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// A frontier from stored parts; `peaks` must hold one hash per set bit of `size`, largest
    /// subtree first (the hashes themselves cannot be checked here).
    pub fn from_parts(size: u64, peaks: Vec<Hash>) -> Result<Self> {
        if peaks.len() != size.count_ones() as usize {
            return Err(Error::TreeSize("frontier needs one peak per set bit of the tree size"));
        }
        Ok(Frontier { size, peaks })
    }

    /// The frontier of the tree of `size` leaves, read from a node store (e.g. at restart).
    pub fn from_source(src: &impl NodeSource, size: u64) -> Result<Self> {
        let peaks =
            Decomposition::peaks(size).map(|(level, index)| src.node(level, index)).collect::<Result<Vec<_>>>()?;
        Ok(Frontier { size, peaks })
    }

    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The peak hashes, largest (leftmost) subtree first.
    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// The tree root: the peaks folded right to left; [`EMPTY_ROOT`] for the empty tree.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        match peaks.next() {
            None => EMPTY_ROOT,
            Some(last) => peaks.fold(*last, |acc, p| node_hash(p, &acc)),
        }
    }

    /// The current peak if it is node `(level, index)`: the node must end exactly at the tree
    /// size (`index + 1 == size >> level`) and bit `level` of the size must be set.
    fn old_peak(&self, level: u8, index: u64) -> Option<&Hash> {
        let shifted = self.size.checked_shr(u32::from(level))?;
        if shifted & 1 == 0 || index.checked_add(1) != Some(shifted) {
            return None;
        }
        // Peaks are stored largest first: this one follows one peak per higher set bit.
        let higher = (shifted >> 1).count_ones();
        self.peaks.get(higher as usize)
    }

    /// Appends `leaves` (leaf hashes). See [`Frontier::append_into`].
    pub fn append(&mut self, leaves: &[Hash]) -> Result<Appended> {
        let mut out = Appended::default();
        self.append_into(leaves, &mut out)?;
        Ok(out)
    }

    /// Like [`Frontier::append`] but without the per-leaf proofs (`proofs` is empty): the root
    /// and the new nodes only, for callers that store nodes and serve proofs from them later.
    pub fn append_nodes(&mut self, leaves: &[Hash]) -> Result<Appended> {
        let mut out = Appended::default();
        let result = self.append_inner(leaves, &mut out, false);
        result.map(|()| out)
    }

    /// Appends `leaves` (leaf hashes) and writes into `out` the new root, each new leaf's
    /// inclusion proof and every node that became complete, reusing `out`'s allocations
    /// (including the inner proof vectors) so that a signer loop allocates little.
    ///
    /// Cost: each new complete node is hashed exactly once (about one SHA-256 per leaf), plus
    /// one hash per peak for the root; proofs are copied from those nodes, the old peaks and
    /// one shared right-hand fold per peak, so no subtree is recomputed per proof.
    ///
    /// Errors only if the size would exceed `u64::MAX` (`Error::TreeSize`) or if an internal
    /// invariant failed (`Error::MissingNode`; not expected). On error `self` is unchanged
    /// and `out` is cleared.
    pub fn append_into(&mut self, leaves: &[Hash], out: &mut Appended) -> Result<()> {
        let result = self.append_inner(leaves, out, true);
        if result.is_err() {
            out.clear();
        }
        result
    }

    fn append_inner(&mut self, leaves: &[Hash], out: &mut Appended, with_proofs: bool) -> Result<()> {
        let old = self.size;
        let added = u64::try_from(leaves.len()).map_err(|_| Error::TreeSize("batch too large"))?;
        let new = old.checked_add(added).ok_or(Error::TreeSize("tree size would exceed 2^64 - 1"))?;

        // 1. Every complete node containing a new leaf, level by level: on level l these are
        //    the indices [old >> l, new >> l). A node's right child always contains a new leaf
        //    (it was computed one level down); its left child either does too, or lies wholly
        //    in [0, old) and is then the old peak at level l - 1.
        let nodes = &mut out.new_nodes;
        nodes.clear();
        nodes.reserve(leaves.len().saturating_mul(2).saturating_add(64));
        let mut levels = Levels { offset: [0; 64], first: [0; 64], len: [0; 64] };
        for level in 0..64u8 {
            let (lo, hi) = (old >> level, new >> level);
            if lo == hi {
                break; // then lo == hi on every higher level too
            }
            let offset = nodes.len();
            if level == 0 {
                nodes.extend(leaves.iter().zip(old..new).map(|(h, i)| (0u8, i, *h)));
            } else {
                let below = level - 1;
                for i in lo..hi {
                    // i < new >> level, so 2i + 1 < new >> (level - 1): no overflow.
                    let (li, ri) = (2 * i, 2 * i + 1);
                    let left = *levels
                        .get(nodes, below, li)
                        .or_else(|| self.old_peak(below, li))
                        .ok_or(Error::MissingNode { level: below, index: li })?;
                    let right = *levels.get(nodes, below, ri).ok_or(Error::MissingNode { level: below, index: ri })?;
                    nodes.push((level, i, node_hash(&left, &right)));
                }
            }
            let l = usize::from(level); // < 64, the arrays' length
            levels.offset[l] = offset;
            levels.first[l] = lo;
            levels.len[l] = hi - lo;
        }

        // 2. The new peaks: a peak containing a new leaf was just computed; any other is an
        //    unchanged old peak (it ends at or before `old`, so `old` shares its high bits).
        let peak_count = new.count_ones() as usize;
        let mut peaks = Vec::with_capacity(peak_count);
        for (level, index) in Decomposition::peaks(new) {
            let h = levels
                .get(nodes, level, index)
                .or_else(|| self.old_peak(level, index))
                .ok_or(Error::MissingNode { level, index })?;
            peaks.push(*h);
        }

        // 3. folds[j] = H(P_j, H(P_j+1, ... P_last)); folds[0] is the root. A leaf in peak j
        //    needs folds[j + 1] as its right-hand proof element.
        let mut folds = vec![EMPTY_ROOT; peak_count];
        let mut acc: Option<Hash> = None;
        for (fold, peak) in folds.iter_mut().zip(&peaks).rev() {
            let h = match acc {
                None => *peak,
                Some(right) => node_hash(peak, &right),
            };
            *fold = h;
            acc = Some(h);
        }
        let root = acc.unwrap_or(EMPTY_ROOT);

        // 4. Proofs (RFC 6962 PATH): for a leaf in peak j, its siblings inside P_j bottom-up
        //    (each a new node or the old peak on that level, the only old node that can be a
        //    left sibling of a path containing a new leaf), then folds[j + 1] unless P_j is the
        //    last peak, then P_j-1, ..., P_0.
        let proofs = &mut out.proofs;
        let wanted = if with_proofs { leaves.len() } else { 0 };
        proofs.truncate(wanted); // keep the remaining inner vectors for reuse
        proofs.resize_with(wanted, Vec::new);
        if with_proofs {
            let mut slots = proofs.iter_mut();
            let mut peak_start = 0u64;
            for (j, (level, _)) in Decomposition::peaks(new).enumerate() {
                let peak_end = peak_start + (1u64 << level); // <= new
                if peak_end > old {
                    let left_peaks = peaks.get(..j).unwrap_or(&[]);
                    let right_fold = folds.get(j + 1);
                    for x in peak_start.max(old)..peak_end {
                        let proof = slots.next().ok_or(Error::MissingNode { level: 0, index: x })?;
                        proof.clear();
                        proof.reserve(usize::from(level) + 1 + j);
                        for l in 0..level {
                            let sib = (x >> l) ^ 1;
                            let h = levels
                                .get(nodes, l, sib)
                                .or_else(|| self.old_peak(l, sib))
                                .ok_or(Error::MissingNode { level: l, index: sib })?;
                            proof.push(*h);
                        }
                        proof.extend(right_fold);
                        proof.extend(left_peaks.iter().rev());
                    }
                }
                peak_start = peak_end;
            }
        }

        self.size = new;
        self.peaks = peaks;
        out.old_size = old;
        out.new_size = new;
        out.root = root;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        for (n, k) in [(2u64, 1u64), (3, 2), (4, 2), (5, 4), (7, 4), (8, 4), (9, 8), (28937, 16384)] {
            assert_eq!(split_point(n), k, "{n}");
        }
        assert_eq!(split_point(u64::MAX), 1 << 63);
        assert_eq!(split_point((1 << 63) + 1), 1 << 63);
        assert_eq!(split_point(1 << 63), 1 << 62);
    }

    #[test]
    fn decomposition_covers_range_with_aligned_nodes() {
        let sizes = (0..300u64).chain([u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1, (1 << 63) + 1]);
        for size in sizes {
            let fwd: Vec<_> = Decomposition::peaks(size).collect();
            let mut back: Vec<_> = Decomposition::peaks(size).rev().collect();
            back.reverse();
            assert_eq!(fwd, back, "{size}");
            assert_eq!(fwd.len(), size.count_ones() as usize);
            // Contiguous, largest first, ending at `size`.
            let mut pos = 0u64;
            for &(level, index) in &fwd {
                assert_eq!(index.checked_mul(1 << level), Some(pos));
                pos = pos.wrapping_add(1 << level);
            }
            assert_eq!(pos, size);
        }
        // A right-hand subtree D[k:n] as visited by the proof recursions.
        let got: Vec<_> = Decomposition::new(8, 13).collect();
        assert_eq!(got, vec![(2, 2), (0, 12)]);
        // Mixed ends: the iterator meets in the middle without repeating a node.
        let mut it = Decomposition::peaks(0b1011);
        assert_eq!(it.next(), Some((3, 0)));
        assert_eq!(it.next_back(), Some((0, 10)));
        assert_eq!(it.next_back(), Some((1, 4)));
        assert_eq!(it.next(), None);
        assert_eq!(it.next_back(), None);
    }

    #[test]
    fn old_peak_lookup() {
        let peaks: Vec<Hash> = (0u8..3).map(|i| [i; 32]).collect();
        let f = Frontier::from_parts(0b1101, peaks).expect("3 peaks");
        assert_eq!(f.old_peak(3, 0), Some(&[0; 32]));
        assert_eq!(f.old_peak(2, 2), Some(&[1; 32]));
        assert_eq!(f.old_peak(0, 12), Some(&[2; 32]));
        assert_eq!(f.old_peak(1, 5), None); // bit 1 of 13 is clear
        assert_eq!(f.old_peak(2, 1), None); // not the node ending at the size
        assert_eq!(f.old_peak(0, 11), None);
        assert_eq!(f.old_peak(64, 0), None);
        assert_eq!(f.old_peak(255, u64::MAX), None);
    }
}
