//! Tests of `allowly_receipt::merkle`: known-answer vectors (RFC 6962 reference trees from
//! transparency-dev/merkle `testonly` and `proof/verify_test.go`), a naive reference written
//! straight from RFC 6962 §2.1's recursive definitions, and property tests against it.

// A failed unwrap is a failed test; production code (src/) has none.

use std::collections::{BTreeMap, HashMap};

use allowly_receipt::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, node_hash, root_from, verify_consistency, verify_inclusion,
    Appended, Frontier, Hash, LeafList, NodeSource, EMPTY_ROOT,
};
use allowly_receipt::{Error, Result};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn hx(s: &str) -> Hash {
    hex::decode(s).expect("hex").try_into().expect("32 bytes")
}

/// Distinct leaf hashes for a test tree.
fn make_leaves(seed: u64, n: usize) -> Vec<Hash> {
    (0..n as u64).map(|i| leaf_hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat())).collect()
}

// ------------------------------------------------------------------------------------------
// Naive reference: RFC 6962 §2.1 MTH, PATH, PROOF/SUBPROOF over a slice of leaf hashes, with
// its own SHA-256 calls (independent of the library's hash helpers). Each proof element is
// tagged with where it enters the hash, which also defines the "shape" a verifier follows.
// ------------------------------------------------------------------------------------------
mod naive {
    use super::*;

    /// Where a proof element sits relative to the path being hashed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Tag {
        /// MTH(D[0:k]): sibling on the left.
        Left,
        /// MTH(D[k:n]): sibling on the right.
        Right,
        /// SUBPROOF's terminal {MTH(D[m])} (b = false).
        Seed,
    }

    /// The largest power of two smaller than n (n > 1).
    pub fn k(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn h_node(l: &Hash, r: &Hash) -> Hash {
        let mut s = Sha256::new();
        s.update([1u8]);
        s.update(l);
        s.update(r);
        s.finalize().into()
    }

    /// MTH(D[n]); the entries of `d` are already leaf hashes SHA-256(0x00 || d(i)).
    pub fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => Sha256::digest(b"").into(),
            1 => d[0],
            n => {
                let k = k(n);
                h_node(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    /// PATH(m, D[n]).
    pub fn path(m: usize, d: &[Hash]) -> Vec<(Hash, Tag)> {
        let n = d.len();
        if n <= 1 {
            return vec![];
        }
        let k = k(n);
        if m < k {
            let mut p = path(m, &d[..k]);
            p.push((mth(&d[k..]), Tag::Right));
            p
        } else {
            let mut p = path(m - k, &d[k..]);
            p.push((mth(&d[..k]), Tag::Left));
            p
        }
    }

    /// PROOF(m, D[n]) = SUBPROOF(m, D[n], true).
    pub fn proof(m: usize, d: &[Hash]) -> Vec<(Hash, Tag)> {
        if m == 0 || m > d.len() {
            return vec![];
        }
        subproof(m, d, true)
    }

    fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<(Hash, Tag)> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![(mth(d), Tag::Seed)] };
        }
        let k = k(n);
        if m <= k {
            let mut p = subproof(m, &d[..k], b);
            p.push((mth(&d[k..]), Tag::Right));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push((mth(&d[..k]), Tag::Left));
            p
        }
    }

    pub fn hashes(p: Vec<(Hash, Tag)>) -> Vec<Hash> {
        p.into_iter().map(|(h, _)| h).collect()
    }

    /// Tags of PATH(m, D[n]) from the sizes alone (same recursion, no hashing).
    pub fn path_shape(m: u64, n: u64) -> Vec<Tag> {
        if n <= 1 {
            return vec![];
        }
        let k = k(n as usize) as u64;
        let (mut p, t) = if m < k { (path_shape(m, k), Tag::Right) } else { (path_shape(m - k, n - k), Tag::Left) };
        p.push(t);
        p
    }

    /// Tags of PROOF(m, D[n]) from the sizes alone, 0 < m < n.
    pub fn proof_shape(m: u64, n: u64, b: bool) -> Vec<Tag> {
        if m == n {
            return if b { vec![] } else { vec![Tag::Seed] };
        }
        let k = k(n as usize) as u64;
        let (mut p, t) =
            if m <= k { (proof_shape(m, k, b), Tag::Right) } else { (proof_shape(m - k, n - k, false), Tag::Left) };
        p.push(t);
        p
    }

    /// Every complete aligned node of D[n] containing a leaf with index >= old, by level then
    /// index, each hashed as MTH of its leaves.
    pub fn new_nodes(d: &[Hash], old: usize) -> Vec<(u8, u64, Hash)> {
        let n = d.len();
        let mut out = vec![];
        for level in 0..64u32 {
            let w = 1usize << level;
            if w > n {
                break;
            }
            for i in 0..n / w {
                let end = (i + 1) * w;
                if end > old {
                    out.push((level as u8, i as u64, mth(&d[i * w..end])));
                }
            }
        }
        out
    }
}

use naive::Tag;

/// Node store built only from `Appended::new_nodes`, as the RocksDB column family will be.
#[derive(Default)]
struct MapStore(HashMap<(u8, u64), Hash>);

impl NodeSource for MapStore {
    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        self.0.get(&(level, index)).copied().ok_or(Error::MissingNode { level, index })
    }
}

/// A consistent tree of up to 2^64 - 1 identical leaves: node (l, i) = uniform[l]. Lets proofs
/// be generated and verified at sizes near u64::MAX.
struct Uniform([Hash; 64]);

impl Uniform {
    fn new() -> Self {
        let mut levels = [leaf_hash(b"uniform"); 64];
        for l in 1..64 {
            levels[l] = node_hash(&levels[l - 1], &levels[l - 1]);
        }
        Uniform(levels)
    }
}

impl NodeSource for Uniform {
    fn node(&self, level: u8, index: u64) -> Result<Hash> {
        let missing = Error::MissingNode { level, index };
        let width = 1u64.checked_shl(level.into()).ok_or(missing.clone())?;
        // The node must end at or before 2^64 - 1, the largest tree size.
        index.checked_add(1).and_then(|e| e.checked_mul(width)).ok_or(missing.clone())?;
        self.0.get(usize::from(level)).copied().ok_or(missing)
    }
}

// ------------------------------------------------------------------------------------------
// Known-answer tests.
// ------------------------------------------------------------------------------------------

/// Leaf inputs of the RFC 6962 reference tree (transparency-dev/merkle testonly.LeafInputs).
fn kat_inputs() -> Vec<Vec<u8>> {
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
        .iter()
        .map(|s| hex::decode(s).expect("hex"))
        .collect()
}

fn kat_leaves() -> Vec<Hash> {
    kat_inputs().iter().map(|d| leaf_hash(d)).collect()
}

/// testonly.NodeHashes: [level][index].
fn kat_nodes() -> Vec<Vec<Hash>> {
    vec![
        vec![
            hx("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            hx("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            hx("0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7"),
            hx("07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7"),
            hx("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            hx("4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658"),
            hx("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            hx("46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1"),
        ],
        vec![
            hx("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
            hx("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            hx("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            hx("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
        ],
        vec![
            hx("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            hx("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
        vec![hx("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
    ]
}

/// testonly.RootHashes: root of the first `size` leaves, size 0..=8.
fn kat_roots() -> Vec<Hash> {
    [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    .iter()
    .map(|s| hx(s))
    .collect()
}

/// (index, size, proof): testonly/reference_test.go TestRefInclusionProof and
/// proof/verify_test.go inclusionProofs (whose leaf numbers are 1-based there).
fn kat_inclusion() -> Vec<(u64, u64, Vec<Hash>)> {
    let p = |v: &[&str]| v.iter().map(|s| hx(s)).collect::<Vec<_>>();
    vec![
        (0, 1, vec![]),
        (0, 2, p(&["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"])),
        (1, 2, p(&["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"])),
        (2, 3, p(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"])),
        (
            1,
            5,
            p(&[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]),
        ),
        (
            0,
            8,
            p(&[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]),
        ),
        (
            5,
            8,
            p(&[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]),
        ),
    ]
}

/// (old_size, new_size, proof): reference_test.go TestRefConsistencyProof and verify_test.go
/// consistencyProofs.
fn kat_consistency() -> Vec<(u64, u64, Vec<Hash>)> {
    let p = |v: &[&str]| v.iter().map(|s| hx(s)).collect::<Vec<_>>();
    vec![
        (1, 1, vec![]),
        (
            1,
            8,
            p(&[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]),
        ),
        (
            2,
            5,
            p(&[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ]),
        ),
        (
            6,
            8,
            p(&[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]),
        ),
        (
            6,
            7,
            p(&[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]),
        ),
    ]
}

const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";

#[test]
fn kat_empty_root_and_hash_functions() {
    assert_eq!(EMPTY_ROOT, hx("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
    assert_eq!(leaf_hash(b""), <[u8; 32]>::from(Sha256::digest([0u8])));
    let (a, b) = (hx(SOME_HASH), EMPTY_ROOT);
    assert_eq!(node_hash(&a, &b), <[u8; 32]>::from(Sha256::digest([&[1u8][..], &a, &b].concat())));
    assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
}

#[test]
fn kat_node_hashes() {
    let nodes = kat_nodes();
    assert_eq!(kat_leaves(), nodes[0]);
    let src = LeafList(kat_leaves());
    for (level, row) in nodes.iter().enumerate() {
        for (index, want) in row.iter().enumerate() {
            assert_eq!(src.node(level as u8, index as u64).unwrap(), *want, "node ({level}, {index})");
        }
    }
    assert_eq!(src.node(0, 8), Err(Error::MissingNode { level: 0, index: 8 }));
    assert_eq!(src.node(3, 1), Err(Error::MissingNode { level: 3, index: 1 }));
    assert_eq!(src.node(4, 0), Err(Error::MissingNode { level: 4, index: 0 }));
    assert_eq!(src.node(64, 0), Err(Error::MissingNode { level: 64, index: 0 }));
    assert_eq!(src.node(255, u64::MAX), Err(Error::MissingNode { level: 255, index: u64::MAX }));
    assert_eq!(src.node(1, u64::MAX), Err(Error::MissingNode { level: 1, index: u64::MAX }));
}

#[test]
fn kat_roots_and_frontiers() {
    let leaves = kat_leaves();
    let roots = kat_roots();
    let nodes = kat_nodes();
    // testonly.CompactTrees: the frontier peaks of every size 0..=8.
    let compact: Vec<Vec<Hash>> = vec![
        vec![],
        vec![nodes[0][0]],
        vec![nodes[1][0]],
        vec![nodes[1][0], nodes[0][2]],
        vec![nodes[2][0]],
        vec![nodes[2][0], nodes[0][4]],
        vec![nodes[2][0], nodes[1][2]],
        vec![nodes[2][0], nodes[1][2], nodes[0][6]],
        vec![nodes[3][0]],
    ];
    let full = LeafList(leaves.clone());
    let mut frontier = Frontier::new();
    assert_eq!(frontier.root(), EMPTY_ROOT);
    for size in 0..=8usize {
        assert_eq!(root_from(&LeafList(leaves[..size].to_vec()), size as u64).unwrap(), roots[size]);
        assert_eq!(root_from(&full, size as u64).unwrap(), roots[size]);
        assert_eq!(naive::mth(&leaves[..size]), roots[size]);
        assert_eq!(frontier.size(), size as u64);
        assert_eq!(frontier.root(), roots[size]);
        assert_eq!(frontier.peaks(), &compact[size][..]);
        assert_eq!(Frontier::from_source(&full, size as u64).unwrap(), frontier);
        assert_eq!(Frontier::from_parts(size as u64, compact[size].clone()).unwrap(), frontier);
        if size < 8 {
            let a = frontier.append(&leaves[size..size + 1]).unwrap();
            assert_eq!(a.root, roots[size + 1]);
        }
    }
    assert!(matches!(root_from(&full, 9), Err(Error::MissingNode { .. })));
}

/// proof/verify_test.go corruptInclusionProof: every probe must fail for the KAT vectors.
fn go_inclusion_probes(
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
    leaf: &Hash,
) -> Vec<(u64, u64, Hash, Hash, Vec<Hash>, String)> {
    let some = hx(SOME_HASH);
    let garbage = [0u8; 32];
    let mut out = vec![
        (index.wrapping_sub(1), size, *root, *leaf, proof.to_vec(), "index - 1".to_string()),
        (index + 1, size, *root, *leaf, proof.to_vec(), "index + 1".into()),
        (index ^ 2, size, *root, *leaf, proof.to_vec(), "index ^ 2".into()),
        (index, size * 2, *root, *leaf, proof.to_vec(), "size * 2".into()),
        (index, size / 2, *root, *leaf, proof.to_vec(), "size / 2".into()),
        (index, size, *root, leaf_hash(b"WrongLeaf"), proof.to_vec(), "wrong leaf".into()),
        (index, size, EMPTY_ROOT, *leaf, proof.to_vec(), "empty root".into()),
        (index, size, some, *leaf, proof.to_vec(), "random root".into()),
        (index, size, *root, *leaf, [proof, &[garbage]].concat(), "trailing garbage".into()),
        (index, size, *root, *leaf, [proof, &[*root]].concat(), "trailing root".into()),
        (index, size, *root, *leaf, [&[garbage], proof].concat(), "preceding garbage".into()),
        (index, size, *root, *leaf, [&[*root], proof].concat(), "preceding root".into()),
    ];
    for i in 0..proof.len() {
        let mut p = proof.to_vec();
        p[i][0] ^= 8;
        out.push((index, size, *root, *leaf, p, format!("modified proof[{i}] bit 3")));
    }
    if let Some((_, init)) = proof.split_last() {
        out.push((index, size, *root, *leaf, init.to_vec(), "removed component".into()));
    }
    if proof.len() > 1 {
        let p = [&[proof[0], some][..], &proof[1..]].concat();
        out.push((index, size, *root, *leaf, p, "inserted component".into()));
    }
    out
}

#[test]
fn kat_inclusion_proofs() {
    let leaves = kat_leaves();
    let roots = kat_roots();
    let src = LeafList(leaves.clone());
    for (index, size, want) in kat_inclusion() {
        let n = size as usize;
        assert_eq!(inclusion_proof(&src, index, size).unwrap(), want, "({index}, {size})");
        assert_eq!(naive::hashes(naive::path(index as usize, &leaves[..n])), want);
        let appended = Frontier::new().append(&leaves[..n]).unwrap();
        assert_eq!(appended.proofs[index as usize], want);
        let (leaf, root) = (leaves[index as usize], roots[n]);
        verify_inclusion(&leaf, index, size, &want, &root).unwrap();
        for (i, s, r, l, p, desc) in go_inclusion_probes(index, size, &want, &root, &leaf) {
            assert!(verify_inclusion(&l, i, s, &p, &r).is_err(), "({index}, {size}) accepted probe {desc}");
        }
    }
}

/// proof/verify_test.go corruptConsistencyProof (for non-empty proofs): every probe must fail.
fn go_consistency_probes(
    m: u64,
    n: u64,
    r1: &Hash,
    r2: &Hash,
    proof: &[Hash],
) -> Vec<(u64, u64, Hash, Hash, Vec<Hash>, String)> {
    let wrong = leaf_hash(b"WrongRoot");
    let garbage = [0u8; 32];
    let p = proof.to_vec();
    let mut out = vec![
        (m - 1, n, *r1, *r2, p.clone(), "size1 - 1".to_string()),
        (m + 1, n, *r1, *r2, p.clone(), "size1 + 1".into()),
        (m ^ 2, n, *r1, *r2, p.clone(), "size1 ^ 2".into()),
        (m, n * 2, *r1, *r2, p.clone(), "size2 * 2".into()),
        (m, n / 2, *r1, *r2, p.clone(), "size2 / 2".into()),
        (m, n, wrong, *r2, p.clone(), "wrong root1".into()),
        (m, n, *r1, wrong, p.clone(), "wrong root2".into()),
        (m, n, *r2, *r1, p.clone(), "swapped roots".into()),
        (m, n, *r1, *r2, vec![], "empty proof".into()),
        (m, n, *r1, *r2, [proof, &[garbage]].concat(), "trailing garbage".into()),
        (m, n, *r1, *r2, [proof, &[*r1]].concat(), "trailing root1".into()),
        (m, n, *r1, *r2, [proof, &[*r2]].concat(), "trailing root2".into()),
        (m, n, *r1, *r2, [&[garbage], proof].concat(), "preceding garbage".into()),
        (m, n, *r1, *r2, [&[*r1], proof].concat(), "preceding root1".into()),
        (m, n, *r1, *r2, [&[*r2], proof].concat(), "preceding root2".into()),
        (m, n, *r1, *r2, [&[proof[0]], proof].concat(), "preceding proof[0]".into()),
        (m, n, *r1, *r2, proof[..proof.len() - 1].to_vec(), "truncated proof".into()),
    ];
    for i in 0..proof.len() {
        let mut q = p.clone();
        q[i][0] ^= 16;
        out.push((m, n, *r1, *r2, q, format!("modified proof[{i}] bit 4")));
    }
    out
}

#[test]
fn kat_consistency_proofs() {
    let leaves = kat_leaves();
    let roots = kat_roots();
    let src = LeafList(leaves.clone());
    for (m, n, want) in kat_consistency() {
        assert_eq!(consistency_proof(&src, m, n).unwrap(), want, "({m}, {n})");
        assert_eq!(naive::hashes(naive::proof(m as usize, &leaves[..n as usize])), want);
        let (r1, r2) = (roots[m as usize], roots[n as usize]);
        verify_consistency(m, n, &r1, &r2, &want).unwrap();
        if want.is_empty() {
            continue;
        }
        for (a, b, x, y, p, desc) in go_consistency_probes(m, n, &r1, &r2, &want) {
            assert!(verify_consistency(a, b, &x, &y, &p).is_err(), "({m}, {n}) accepted probe {desc}");
        }
    }
}

/// proof/verify_test.go TestVerifyInclusion / TestVerifyInclusionSingleEntry.
#[test]
fn kat_verify_inclusion_edge_cases() {
    let some = hx(SOME_HASH);
    for (index, size) in [(0, 0), (0, 1), (1, 0), (2, 1)] {
        assert!(verify_inclusion(&some, index, size, &[], &[0; 32]).is_err());
        assert!(verify_inclusion(&[0; 32], index, size, &[], &EMPTY_ROOT).is_err());
        assert!(verify_inclusion(&some, index, size, &[], &EMPTY_ROOT).is_err());
    }
    assert_eq!(verify_inclusion(&some, 0, 0, &[], &some), Err(Error::IndexOutOfRange { index: 0, size: 0 }));
    assert_eq!(verify_inclusion(&some, 5, 5, &[], &some), Err(Error::IndexOutOfRange { index: 5, size: 5 }));
    let h = leaf_hash(b"data");
    verify_inclusion(&h, 0, 1, &[], &h).unwrap();
    assert!(verify_inclusion(&h, 0, 1, &[], &[0; 32]).is_err());
    assert!(verify_inclusion(&[0; 32], 0, 1, &[], &h).is_err());
    assert!(verify_inclusion(&h, 0, 1, &[h], &h).is_err());
}

/// proof/verify_test.go TestVerifyConsistency, with this module's stricter rule that a size-0
/// tree must have EMPTY_ROOT.
#[test]
fn kat_verify_consistency_edge_cases() {
    let (r1, r2) = (leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2"));
    let e = EMPTY_ROOT;
    let cases: Vec<(u64, u64, Hash, Hash, Vec<Hash>, bool)> = vec![
        (0, 0, r1, r2, vec![], false),
        (1, 1, r1, r2, vec![], false),
        (0, 0, e, e, vec![], true),
        (0, 1, e, r2, vec![], true),
        (1, 1, r2, r2, vec![], true),
        // Go accepts these; a tree of size 0 has no root other than EMPTY_ROOT.
        (0, 0, r1, r1, vec![], false),
        (0, 1, r1, r2, vec![], false),
        (1, 0, r1, r2, vec![], false),
        (2, 1, r1, r2, vec![], false),
        (1, 2, r1, r2, vec![], false),
        (0, 0, e, r2, vec![], false),
        (1, 1, e, r2, vec![], false),
        (0, 0, e, e, vec![e], false),
        (0, 1, e, e, vec![e], false),
        (1, 1, e, e, vec![e], false),
    ];
    for (m, n, a, b, p, ok) in cases {
        assert_eq!(verify_consistency(m, n, &a, &b, &p).is_ok(), ok, "({m}, {n})");
    }
    assert!(matches!(verify_consistency(2, 1, &r1, &r2, &[]), Err(Error::TreeSize(_))));
    assert!(matches!(verify_consistency(1, 2, &r1, &r2, &[]), Err(Error::Proof(_))));
}

#[test]
fn generator_errors() {
    let src = LeafList(make_leaves(1, 10));
    assert_eq!(inclusion_proof(&src, 10, 10), Err(Error::IndexOutOfRange { index: 10, size: 10 }));
    assert_eq!(inclusion_proof(&src, 0, 0), Err(Error::IndexOutOfRange { index: 0, size: 0 }));
    assert!(matches!(consistency_proof(&src, 5, 4), Err(Error::TreeSize(_))));
    assert_eq!(consistency_proof(&src, 0, 10).unwrap(), Vec::<Hash>::new());
    assert_eq!(consistency_proof(&src, 7, 7).unwrap(), Vec::<Hash>::new());
    assert!(matches!(inclusion_proof(&src, 3, 11), Err(Error::MissingNode { .. })));
    assert!(matches!(consistency_proof(&src, 3, 11), Err(Error::MissingNode { .. })));
    assert!(matches!(root_from(&src, u64::MAX), Err(Error::MissingNode { .. })));
    assert!(matches!(inclusion_proof(&src, u64::MAX - 1, u64::MAX), Err(Error::MissingNode { .. })));
    assert!(matches!(Frontier::from_source(&src, 11), Err(Error::MissingNode { .. })));
    assert!(matches!(Frontier::from_parts(3, vec![[0; 32]]), Err(Error::TreeSize(_))));
    assert!(matches!(Frontier::from_parts(0, vec![[0; 32]]), Err(Error::TreeSize(_))));
    assert!(Frontier::from_parts(u64::MAX, vec![[0; 32]; 64]).is_ok());
}

/// Exhaustive over small trees: every index and every old size against the naive reference.
#[test]
fn exhaustive_small_trees() {
    let leaves = make_leaves(7, 40);
    for n in 0..=leaves.len() {
        let d = &leaves[..n];
        let src = LeafList(d.to_vec());
        let root = naive::mth(d);
        assert_eq!(root_from(&src, n as u64).unwrap(), root);
        for i in 0..n {
            let p = inclusion_proof(&src, i as u64, n as u64).unwrap();
            assert_eq!(p, naive::hashes(naive::path(i, d)), "PATH({i}, {n})");
            verify_inclusion(&d[i], i as u64, n as u64, &p, &root).unwrap();
        }
        for m in 0..=n {
            let p = consistency_proof(&src, m as u64, n as u64).unwrap();
            assert_eq!(p, naive::hashes(naive::proof(m, d)), "PROOF({m}, {n})");
            let old_root = naive::mth(&d[..m]);
            verify_consistency(m as u64, n as u64, &old_root, &root, &p).unwrap();
        }
        // Every split of [0, n) into two appends.
        for m in 0..=n {
            let mut f = Frontier::from_source(&src, m as u64).unwrap();
            let a = f.append(&d[m..]).unwrap();
            assert_eq!(a.root, root);
            assert_eq!(a.new_nodes, naive::new_nodes(d, m));
            for (j, p) in a.proofs.iter().enumerate() {
                assert_eq!(*p, naive::hashes(naive::path(m + j, d)));
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Property tests.
// ------------------------------------------------------------------------------------------

/// Checks every tampering of a valid inclusion proof. Changing the index or size is accepted
/// exactly when the verifier would walk the same path shape (RFC 9162 proofs bind index and
/// size only through the root), which the naive reference decides independently.
fn check_inclusion_tampering(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
    other: u64,
) -> std::result::Result<(), TestCaseError> {
    let shape = naive::path_shape(index, size);
    let alternatives = [
        (index.wrapping_sub(1), size),
        (index.wrapping_add(1), size),
        (index ^ 1, size),
        (index ^ 2, size),
        (other % size, size),
        (index, size + 1),
        (index, size.wrapping_sub(1)),
        (index, size * 2),
        (index, size / 2),
        (index, other % (2 * size + 2)),
        (other % (size + 1), size + 1 + other % 64),
    ];
    for (i, s) in alternatives {
        if (i, s) == (index, size) {
            continue;
        }
        let expect_ok = i < s && naive::path_shape(i, s) == shape;
        let got = verify_inclusion(leaf, i, s, proof, root);
        prop_assert_eq!(got.is_ok(), expect_ok, "index {} size {} (from {} of {}): {:?}", i, s, index, size, got);
        if i >= s {
            prop_assert_eq!(got, Err(Error::IndexOutOfRange { index: i, size: s }));
        }
    }
    for k in 0..proof.len() {
        for byte in [0usize, 17, 31] {
            let mut p = proof.to_vec();
            p[k][byte] ^= 1 << (other % 8);
            prop_assert!(verify_inclusion(leaf, index, size, &p, root).is_err());
        }
    }
    let mut bad_leaf = *leaf;
    bad_leaf[(other % 32) as usize] ^= 0x80;
    prop_assert!(verify_inclusion(&bad_leaf, index, size, proof, root).is_err());
    let mut bad_root = *root;
    bad_root[(other % 32) as usize] ^= 0x01;
    prop_assert!(verify_inclusion(leaf, index, size, proof, &bad_root).is_err());
    if let Some((_, init)) = proof.split_last() {
        prop_assert!(verify_inclusion(leaf, index, size, init, root).is_err());
        prop_assert!(verify_inclusion(leaf, index, size, &proof[1..], root).is_err());
    }
    for extra in [[0u8; 32], *root, *leaf] {
        prop_assert!(verify_inclusion(leaf, index, size, &[proof, &[extra]].concat(), root).is_err());
        prop_assert!(verify_inclusion(leaf, index, size, &[&[extra], proof].concat(), root).is_err());
    }
    if proof.len() >= 2 {
        let mut p = proof.to_vec();
        p.swap(0, 1);
        prop_assert!(verify_inclusion(leaf, index, size, &p, root).is_err());
    }
    Ok(())
}

/// The shape a consistency verifier walks for 0 < m < n (Seed first iff m is not a power of 2).
fn consistency_shape(m: u64, n: u64) -> Option<Vec<Tag>> {
    (0 < m && m < n).then(|| naive::proof_shape(m, n, true))
}

fn check_consistency_tampering(
    m: u64,
    n: u64,
    r1: &Hash,
    r2: &Hash,
    proof: &[Hash],
    other: u64,
) -> std::result::Result<(), TestCaseError> {
    let shape = consistency_shape(m, n);
    let alternatives = [
        (m - 1, n),
        (m + 1, n),
        (m ^ 1, n),
        (m ^ 2, n),
        (m, n + 1),
        (m, n - 1),
        (m, n * 2),
        (m, n / 2),
        (other % (n + 1), n),
        (m, m + other % (2 * n)),
        (other % (n + 1), other % (2 * n + 2)),
    ];
    for (a, b) in alternatives {
        if (a, b) == (m, n) {
            continue;
        }
        // Non-empty proofs are accepted only for 0 < a < b with the same shape.
        let expect_ok = consistency_shape(a, b).is_some() && consistency_shape(a, b) == shape;
        let got = verify_consistency(a, b, r1, r2, proof);
        prop_assert_eq!(got.is_ok(), expect_ok, "sizes {}..{} (from {}..{}): {:?}", a, b, m, n, got);
    }
    for k in 0..proof.len() {
        for byte in [0usize, 13, 31] {
            let mut p = proof.to_vec();
            p[k][byte] ^= 1 << (other % 8);
            prop_assert!(verify_consistency(m, n, r1, r2, &p).is_err());
        }
    }
    let mut bad = *r1;
    bad[(other % 32) as usize] ^= 0x40;
    prop_assert!(verify_consistency(m, n, &bad, r2, proof).is_err());
    let mut bad = *r2;
    bad[(other % 32) as usize] ^= 0x02;
    prop_assert!(verify_consistency(m, n, r1, &bad, proof).is_err());
    prop_assert!(verify_consistency(m, n, r2, r1, proof).is_err());
    prop_assert!(verify_consistency(m, n, r1, r2, &[]).is_err());
    prop_assert!(verify_consistency(m, n, r1, r2, &proof[..proof.len() - 1]).is_err());
    prop_assert!(verify_consistency(m, n, r1, r2, &proof[1..]).is_err());
    for extra in [[0u8; 32], *r1, *r2, proof[0]] {
        prop_assert!(verify_consistency(m, n, r1, r2, &[proof, &[extra]].concat()).is_err());
        prop_assert!(verify_consistency(m, n, r1, r2, &[&[extra], proof].concat()).is_err());
    }
    Ok(())
}

/// Sizes with plenty of edge cases: tiny, around powers of two, near u64::MAX, arbitrary.
fn any_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=70,
        (0u32..64, -2i64..=2).prop_map(|(b, d)| (1u64 << b).wrapping_add_signed(d)),
        (0u64..=70).prop_map(|d| u64::MAX - d),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) root_from(LeafList) == MTH.
    #[test]
    fn prop_root(seed: u64, n in 0usize..=300) {
        let d = make_leaves(seed, n);
        prop_assert_eq!(root_from(&LeafList(d.clone()), n as u64).unwrap(), naive::mth(&d));
    }

    /// (b) inclusion_proof == PATH, verifies, and (e) every tampering fails.
    #[test]
    fn prop_inclusion(seed: u64, n in 1usize..=300, pick: u64, other: u64) {
        let d = make_leaves(seed, n);
        let index = pick % n as u64;
        let root = naive::mth(&d);
        let p = inclusion_proof(&LeafList(d.clone()), index, n as u64).unwrap();
        prop_assert_eq!(&p, &naive::hashes(naive::path(index as usize, &d)));
        prop_assert_eq!(verify_inclusion(&d[index as usize], index, n as u64, &p, &root), Ok(()));
        check_inclusion_tampering(&d[index as usize], index, n as u64, &p, &root, other)?;
    }

    /// (c) consistency_proof == PROOF, verifies, and (e) every tampering fails.
    #[test]
    fn prop_consistency(seed: u64, n in 0usize..=300, pick: u64, other: u64) {
        let d = make_leaves(seed, n);
        let m = (pick % (n as u64 + 1)) as usize;
        let (r1, r2) = (naive::mth(&d[..m]), naive::mth(&d));
        let p = consistency_proof(&LeafList(d.clone()), m as u64, n as u64).unwrap();
        prop_assert_eq!(&p, &naive::hashes(naive::proof(m, &d)));
        prop_assert_eq!(verify_consistency(m as u64, n as u64, &r1, &r2, &p), Ok(()));
        if !p.is_empty() {
            check_consistency_tampering(m as u64, n as u64, &r1, &r2, &p, other)?;
        }
    }

}

proptest! {
    // O(n^2) naive PATH work per case in a debug build: fewer cases, still every split shape.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// (d) A frontier fed random batch splits matches the naive tree at every step; the nodes it
    /// reports suffice for a store to serve every later root and proof.
    #[test]
    fn prop_frontier(seed: u64, n in 0usize..=300, cuts in proptest::collection::vec(0usize..=80, 0..24)) {
        let d = make_leaves(seed, n);
        let mut frontier = Frontier::new();
        let mut reused_frontier = Frontier::new();
        let mut nodes_frontier = Frontier::new();
        let mut reused = Appended::default();
        let mut store = MapStore::default();
        let mut sizes = vec![0usize];
        let mut cuts = cuts.into_iter();
        let mut at = 0usize;
        while at < n || sizes.len() == 1 {
            let take = cuts.next().unwrap_or(n - at).min(n - at);
            let a = frontier.append(&d[at..at + take]).unwrap();
            let new = at + take;
            let tree = &d[..new];
            prop_assert_eq!((a.old_size, a.new_size), (at as u64, new as u64));
            prop_assert_eq!(a.root, naive::mth(tree));
            prop_assert_eq!(frontier.root(), a.root);
            prop_assert_eq!(frontier.size(), new as u64);
            prop_assert_eq!(a.proofs.len(), take);
            for (j, p) in a.proofs.iter().enumerate() {
                let x = at + j;
                prop_assert_eq!(p, &naive::hashes(naive::path(x, tree)));
                prop_assert_eq!(verify_inclusion(&d[x], x as u64, new as u64, p, &a.root), Ok(()));
            }
            // Exactly the complete nodes containing a new leaf, sorted by (level, index).
            prop_assert_eq!(&a.new_nodes, &naive::new_nodes(tree, at));
            // The allocation-reusing variant gives the same answer.
            reused_frontier.append_into(&d[at..at + take], &mut reused).unwrap();
            prop_assert_eq!(&reused, &a);
            // Without proofs: the same root, nodes and resulting frontier, no proofs.
            let mut lean = nodes_frontier.clone();
            let n_only = lean.append_nodes(&d[at..at + take]).unwrap();
            prop_assert_eq!((n_only.root, &n_only.new_nodes, n_only.new_size), (a.root, &a.new_nodes, a.new_size));
            prop_assert!(n_only.proofs.is_empty());
            nodes_frontier = lean;
            prop_assert_eq!(nodes_frontier.peaks(), frontier.peaks());
            prop_assert_eq!(&reused_frontier, &frontier);
            // Frontier state equals what a store holding the reported nodes reconstructs.
            store.0.extend(a.new_nodes.iter().map(|&(l, i, h)| ((l, i), h)));
            prop_assert_eq!(&Frontier::from_source(&store, new as u64).unwrap(), &frontier);
            sizes.push(new);
            at = new;
            if n == 0 { break; }
        }
        // The store built only from new_nodes serves every proof of the final tree.
        let nn = n as u64;
        prop_assert_eq!(root_from(&store, nn).unwrap(), naive::mth(&d));
        for x in [0, n / 3, n / 2, n.saturating_sub(1)] {
            if x < n {
                prop_assert_eq!(inclusion_proof(&store, x as u64, nn).unwrap(), naive::hashes(naive::path(x, &d)));
            }
        }
        for &m in &sizes {
            prop_assert_eq!(consistency_proof(&store, m as u64, nn).unwrap(), naive::hashes(naive::proof(m, &d)));
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// (f) Verification never panics, and random input never verifies.
    #[test]
    fn prop_verify_arbitrary(
        a in any_size(), b in any_size(), leaf: [u8; 32], root: [u8; 32],
        proof in proptest::collection::vec(any::<[u8; 32]>(), 0..=70),
    ) {
        prop_assert!(verify_inclusion(&leaf, a, b, &proof, &root).is_err());
        prop_assert!(verify_inclusion(&leaf, a % b.max(1), b, &proof, &root).is_err());
        prop_assert!(verify_consistency(a, b, &leaf, &root, &proof).is_err());
        prop_assert!(verify_consistency(a.min(b), a.max(b), &leaf, &root, &proof).is_err());
    }

    /// Generation and verification agree at any size up to u64::MAX (a consistent tree of
    /// identical leaves), and the frontier keeps working at the top of the range.
    #[test]
    fn prop_huge_sizes(a in any_size(), b in any_size(), pick: u64, batch in 0usize..=20) {
        let u = Uniform::new();
        let (m, n) = (a.min(b), a.max(b));
        let (r1, r2) = (root_from(&u, m).unwrap(), root_from(&u, n).unwrap());
        let p = consistency_proof(&u, m, n).unwrap();
        prop_assert!(p.len() <= 128);
        prop_assert_eq!(verify_consistency(m, n, &r1, &r2, &p), Ok(()));
        if n > 0 {
            let i = pick % n;
            let p = inclusion_proof(&u, i, n).unwrap();
            prop_assert!(p.len() <= 64);
            prop_assert_eq!(verify_inclusion(&u.0[0], i, n, &p, &r2), Ok(()));
        }
        let mut f = Frontier::from_source(&u, m).unwrap();
        prop_assert_eq!(f.root(), r1);
        let leaves = vec![u.0[0]; batch];
        match m.checked_add(batch as u64) {
            Some(end) => {
                let got = f.append(&leaves).unwrap();
                prop_assert_eq!(got.root, root_from(&u, end).unwrap());
                for (j, p) in got.proofs.iter().enumerate() {
                    prop_assert_eq!(p, &inclusion_proof(&u, m + j as u64, end).unwrap());
                }
            }
            None => {
                let before = f.clone();
                let mut out = Appended { root: [7; 32], ..Appended::default() };
                prop_assert!(matches!(f.append_into(&leaves, &mut out), Err(Error::TreeSize(_))));
                prop_assert_eq!(&f, &before);
                prop_assert_eq!(out, Appended { root: EMPTY_ROOT, ..Appended::default() });
            }
        }
    }
}

#[test]
fn frontier_edge_cases() {
    // Empty batches are no-ops that still report the root.
    let mut f = Frontier::new();
    let a = f.append(&[]).unwrap();
    assert_eq!(a, Appended { root: EMPTY_ROOT, ..Appended::default() });
    let d = make_leaves(3, 5);
    f.append(&d).unwrap();
    let a = f.append(&[]).unwrap();
    assert_eq!((a.old_size, a.new_size, a.root), (5, 5, naive::mth(&d)));
    assert!(a.proofs.is_empty() && a.new_nodes.is_empty());

    // The very last leaf position and overflow past it.
    let u = Uniform::new();
    let mut f = Frontier::from_source(&u, u64::MAX - 1).unwrap();
    let a = f.append(&[u.0[0]]).unwrap();
    assert_eq!(a.root, root_from(&u, u64::MAX).unwrap());
    assert_eq!(a.proofs[0], inclusion_proof(&u, u64::MAX - 1, u64::MAX).unwrap());
    assert_eq!(a.proofs[0].len(), 63);
    assert_eq!(f.peaks().len(), 64);
    let before = f.clone();
    assert_eq!(f.append(&[u.0[0]]), Err(Error::TreeSize("tree size would exceed 2^64 - 1")));
    assert_eq!(f, before);
    verify_inclusion(&u.0[0], u64::MAX - 1, u64::MAX, &a.proofs[0], &a.root).unwrap();

    // append_into reuses and correctly shrinks a previous, larger output.
    let d = make_leaves(9, 100);
    let mut f = Frontier::new();
    let mut out = Appended::default();
    f.append_into(&d[..60], &mut out).unwrap();
    f.append_into(&d[60..63], &mut out).unwrap();
    assert_eq!(out.proofs.len(), 3);
    assert_eq!(out.new_nodes, naive::new_nodes(&d[..63], 60));
    for (j, p) in out.proofs.iter().enumerate() {
        assert_eq!(*p, naive::hashes(naive::path(60 + j, &d[..63])));
    }
}

/// Check that the Levels bookkeeping in a long run of single appends never drifts, and
/// that peaks (largest first) line up with the decomposition of the size.
#[test]
fn frontier_single_appends_match_source() {
    let d = make_leaves(11, 600);
    let src = LeafList(d.clone());
    let mut f = Frontier::new();
    let mut seen: BTreeMap<(u8, u64), Hash> = BTreeMap::new();
    for (x, leaf) in d.iter().enumerate() {
        let a = f.append(std::slice::from_ref(leaf)).unwrap();
        for &(l, i, h) in &a.new_nodes {
            assert_eq!(src.node(l, i).unwrap(), h);
            assert!(seen.insert((l, i), h).is_none(), "node ({l}, {i}) reported twice");
        }
        assert_eq!(f, Frontier::from_source(&src, x as u64 + 1).unwrap());
    }
    // Every complete node of the 600-leaf tree was reported exactly once.
    assert_eq!(seen.len(), naive::new_nodes(&d, 0).len());
}
