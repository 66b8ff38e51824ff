//! Verified streaming (DESIGN B1): checking an object's bytes group by group
//! against the one BLAKE3 hash the server gave, so a large object streams and a
//! bad byte is caught within 16 KiB.
//!
//! BLAKE3 is a Merkle tree over 1 KiB chunks. A *group* here is 16 chunks
//! (16 KiB), aligned, so each group is a complete subtree whose chaining value
//! (CV) can be computed on its own. A peer sends the list of group CVs first (32
//! bytes per 16 KiB: 0.2 % overhead); the client merges them up the tree exactly
//! as BLAKE3 does and accepts the list only if the result is the server's hash.
//! After that, every group that arrives, from any peer and any range, is checked
//! against its CV before a byte of it is used. (This is the idea of bao / iroh's
//! verified streaming with chunk groups, with the outboard reduced to its leaves.)
//!
//! Objects of one group or less have no tree: they are checked whole.

pub use blake3::hazmat::ChainingValue;
use blake3::hazmat::{
    HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::hash::ObjectHash;

/// Bytes per verified group (16 BLAKE3 chunks).
pub const GROUP: u64 = 16 * 1024;

/// Number of groups of an object of `size` bytes.
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP).max(1)
}

/// Byte length of group `index` of an object of `size` bytes (0 past the end,
/// however far: an index from a peer may be anything).
pub fn group_len(size: u64, index: u64) -> u64 {
    let start = index.saturating_mul(GROUP);
    size.saturating_sub(start).min(GROUP)
}

/// The CV of group `index` holding `bytes` (the object must be larger than one group).
pub fn group_cv(index: u64, bytes: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index.saturating_mul(GROUP));
    h.update(bytes);
    h.finalize_non_root()
}

/// The CVs of every group of `data`, concatenated (the "outboard" a peer serves).
/// Empty for objects of one group or less.
pub fn outboard(data: &[u8]) -> Vec<u8> {
    if data.len() as u64 <= GROUP {
        return Vec::new();
    }
    data.chunks(GROUP as usize)
        .enumerate()
        .flat_map(|(i, g)| group_cv(i as u64, g))
        .collect()
}

/// [`outboard`] of a stream of `size` bytes, read group by group (bounded memory).
pub fn outboard_from_reader<R: std::io::Read>(
    mut reader: R,
    size: u64,
) -> std::io::Result<Vec<u8>> {
    if size <= GROUP {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity((group_count(size) * 32) as usize);
    let mut buf = vec![0u8; GROUP as usize];
    for index in 0..group_count(size) {
        let len = group_len(size, index) as usize;
        reader.read_exact(&mut buf[..len])?;
        out.extend_from_slice(&group_cv(index, &buf[..len]));
    }
    Ok(out)
}

fn subtree(cvs: &[ChainingValue], len: u64) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left_len = left_subtree_len(len);
    let split = (left_len / GROUP) as usize;
    let l = subtree(&cvs[..split], left_len);
    let r = subtree(&cvs[split..], len - left_len);
    merge_subtrees_non_root(&l, &r, Mode::Hash)
}

/// Why an outboard was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutboardError {
    /// Wrong length for the object's size.
    #[error("outboard has the wrong length")]
    Length,
    /// The CVs do not add up to the server's hash.
    #[error("outboard does not match the object's hash")]
    Mismatch,
}

/// Checks an outboard against the server's hash and returns the group CVs.
pub fn verify_outboard(
    hash: &ObjectHash,
    size: u64,
    outboard: &[u8],
) -> Result<Vec<ChainingValue>, OutboardError> {
    if size <= GROUP {
        return if outboard.is_empty() {
            Ok(Vec::new())
        } else {
            Err(OutboardError::Length)
        };
    }
    let groups = group_count(size);
    if outboard.len() as u64 != groups * 32 {
        return Err(OutboardError::Length);
    }
    let cvs: Vec<ChainingValue> = outboard
        .chunks_exact(32)
        .map(|c| {
            let mut cv = [0u8; 32];
            cv.copy_from_slice(c);
            cv
        })
        .collect();
    if root_of(&cvs, size) == *hash {
        Ok(cvs)
    } else {
        Err(OutboardError::Mismatch)
    }
}

/// The object's hash from its group CVs (an object of more than one group,
/// `cvs` complete for `size`), merged up the tree as BLAKE3 does.
fn root_of(cvs: &[ChainingValue], size: u64) -> ObjectHash {
    let left_len = left_subtree_len(size);
    let split = (left_len / GROUP) as usize;
    let root = merge_subtrees_root(
        &subtree(&cvs[..split], left_len),
        &subtree(&cvs[split..], size - left_len),
        Mode::Hash,
    );
    ObjectHash::from_bytes(*root.as_bytes())
}

/// An object's hash and its [`outboard`] in one pass over a stream (the
/// server indexing a large file, so a crowd's first asks for the outboard
/// find it ready): each group is hashed once and the root comes from the
/// group CVs. Holds one group and the CVs so far (32 bytes per 16 KiB).
#[derive(Debug, Default)]
pub struct OutboardHasher {
    cvs: Vec<ChainingValue>,
    group: Vec<u8>,
    len: u64,
}

impl OutboardHasher {
    /// Starts an empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.group.len() == GROUP as usize {
                let index = self.cvs.len() as u64;
                self.cvs.push(group_cv(index, &self.group));
                self.group.clear();
            }
            let take = (GROUP as usize - self.group.len()).min(bytes.len());
            self.group.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }

    /// The hash of everything fed, its outboard (empty for one group or
    /// less) and its length.
    pub fn finish(mut self) -> (ObjectHash, Vec<u8>, u64) {
        if self.len <= GROUP {
            return (ObjectHash::of(&self.group), Vec::new(), self.len);
        }
        let index = self.cvs.len() as u64;
        self.cvs.push(group_cv(index, &self.group));
        let hash = root_of(&self.cvs, self.len);
        (hash, self.cvs.concat(), self.len)
    }
}

/// Checks one group's bytes. `cvs` is empty for single-group objects, which are
/// checked against the whole hash.
pub fn verify_group(
    hash: &ObjectHash,
    size: u64,
    cvs: &[ChainingValue],
    index: u64,
    bytes: &[u8],
) -> bool {
    if bytes.len() as u64 != group_len(size, index) {
        return false;
    }
    if size <= GROUP {
        return index == 0 && ObjectHash::of(bytes) == *hash;
    }
    cvs.get(index as usize)
        .is_some_and(|cv| group_cv(index, bytes) == *cv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn edges_of_the_tree() {
        for len in [
            0usize,
            1,
            1024,
            16 * 1024,
            16 * 1024 + 1,
            32 * 1024,
            48 * 1024 + 7,
            1 << 20,
            (1 << 20) + 1,
        ] {
            let d = data(len);
            let h = ObjectHash::of(&d);
            let ob = outboard(&d);
            let cvs = verify_outboard(&h, len as u64, &ob).unwrap_or_else(|e| panic!("{len}: {e}"));
            for (i, g) in d.chunks(GROUP as usize).enumerate() {
                assert!(
                    verify_group(&h, len as u64, &cvs, i as u64, g),
                    "{len} group {i}"
                );
            }
            if len == 0 {
                assert!(verify_group(&h, 0, &cvs, 0, &[]));
            }
        }
    }

    #[test]
    fn one_pass_gives_the_hash_and_the_outboard_at_every_edge() {
        for len in [
            0usize,
            1,
            16 * 1024,
            16 * 1024 + 1,
            48 * 1024 + 7,
            (1 << 20) + 1,
        ] {
            let d = data(len);
            // Fed in uneven slices, as reads come.
            let mut h = OutboardHasher::new();
            for part in d.chunks(7_777) {
                h.update(part);
            }
            let (hash, ob, size) = h.finish();
            assert_eq!(hash, ObjectHash::of(&d), "{len}");
            assert_eq!(ob, outboard(&d), "{len}");
            assert_eq!(size, len as u64);
        }
    }

    #[test]
    fn a_huge_group_index_is_past_the_end_not_an_overflow() {
        // Found by fuzzing (docs/fuzzing.md): `index * GROUP` overflowed.
        let d = data(40_000);
        let h = ObjectHash::of(&d);
        let cvs = verify_outboard(&h, 40_000, &outboard(&d)).unwrap();
        for index in [1 << 50, u64::MAX / GROUP + 1, u64::MAX] {
            assert_eq!(group_len(40_000, index), 0);
            assert_eq!(group_len(u64::MAX, index), 0);
            assert!(!verify_group(&h, 40_000, &cvs, index, &[]));
            assert!(!verify_group(&h, 40_000, &cvs, index, &d[..GROUP as usize]));
        }
    }

    #[test]
    fn reader_and_slice_outboards_agree() {
        let d = data(100_000);
        assert_eq!(
            outboard_from_reader(&d[..], d.len() as u64).unwrap(),
            outboard(&d)
        );
    }

    proptest! {
        #[test]
        fn outboards_verify_and_any_flipped_byte_is_caught(len in 0usize..200_000, flip in any::<usize>(), bit in 0u8..8) {
            let d = data(len);
            let h = ObjectHash::of(&d);
            let cvs = verify_outboard(&h, len as u64, &outboard(&d)).unwrap();
            if len > 0 {
                let pos = flip % len;
                let mut bad = d.clone();
                bad[pos] ^= 1 << bit;
                let g = pos as u64 / GROUP;
                let start = (g * GROUP) as usize;
                let end = (start + GROUP as usize).min(len);
                prop_assert!(!verify_group(&h, len as u64, &cvs, g, &bad[start..end]));
                if len as u64 > GROUP {
                    // A lying outboard is refused before any content is used.
                    let mut ob = outboard(&d);
                    let at = flip % ob.len();
                    ob[at] ^= 1;
                    prop_assert!(verify_outboard(&h, len as u64, &ob).is_err());
                }
            }
        }
    }
}
