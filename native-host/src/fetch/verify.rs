//! Verification (B1): nothing from a peer or the server is kept or passed on
//! before it matches the hash the server gave.
//!
//! - A multi-source transfer first gets a [`Proof`]: the object's group CVs,
//!   accepted only if they add up to the hash. Every 16 KiB group is then
//!   checked against its CV as it arrives.
//! - A body the server sends whole is hashed as it streams ([`WholeCheck`]); a
//!   mismatch at the end fails the download and nothing is kept.

use peercache_core::hash::{ObjectHash, StreamHasher};
use peercache_core::verified::{ChainingValue, group_count, verify_group, verify_outboard};

use super::source::{SourceError, SourceRef, Transport};

/// An object's verified group CVs.
#[derive(Debug, Clone)]
pub struct Proof {
    hash: ObjectHash,
    size: u64,
    cvs: Vec<ChainingValue>,
}

impl Proof {
    /// The proof of an object of one group or less: its hash alone.
    pub fn single_group(hash: ObjectHash, size: u64) -> Self {
        Self {
            hash,
            size,
            cvs: Vec::new(),
        }
    }

    /// Asks `source` for the object's CVs and accepts them only if they add up
    /// to `hash`; a longer or wrong list makes the source a liar.
    pub async fn from_source(
        transport: &Transport,
        source: &SourceRef,
        hash: ObjectHash,
        size: u64,
    ) -> Result<Self, SourceError> {
        let limit = group_count(size) * 32;
        let outboard = source.outboard(transport, hash, limit).await?;
        let cvs = verify_outboard(&hash, size, &outboard).map_err(|_| SourceError::Mismatch)?;
        Ok(Self { hash, size, cvs })
    }

    /// Whether `bytes` are group `index` of the object.
    pub fn check_group(&self, index: u64, bytes: &[u8]) -> bool {
        verify_group(&self.hash, self.size, &self.cvs, index, bytes)
    }

    /// The CVs as stored beside a kept object (empty for single-group objects).
    pub fn outboard(&self) -> Vec<u8> {
        self.cvs.iter().flat_map(|cv| cv.iter().copied()).collect()
    }
}

/// Hashes a body as it streams; see the module docs.
#[derive(Default)]
pub struct WholeCheck {
    hasher: StreamHasher,
}

impl std::fmt::Debug for WholeCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WholeCheck")
            .field("len", &self.hasher.len())
            .finish()
    }
}

impl WholeCheck {
    /// Adds the next piece.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    /// The hash of everything that arrived.
    pub fn finish(&self) -> ObjectHash {
        self.hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercache_core::verified::{GROUP, outboard};

    #[test]
    fn a_proof_checks_each_group_and_round_trips_its_outboard() {
        let data: Vec<u8> = (0..(3 * GROUP + 100)).map(|i| (i % 251) as u8).collect();
        let hash = ObjectHash::of(&data);
        let ob = outboard(&data);
        let cvs = verify_outboard(&hash, data.len() as u64, &ob).unwrap();
        let proof = Proof {
            hash,
            size: data.len() as u64,
            cvs,
        };
        assert!(proof.check_group(1, &data[GROUP as usize..2 * GROUP as usize]));
        assert!(!proof.check_group(2, &data[GROUP as usize..2 * GROUP as usize]));
        assert_eq!(proof.outboard(), ob);
        let small = Proof::single_group(ObjectHash::of(b"abc"), 3);
        assert!(small.check_group(0, b"abc"));
        assert!(!small.check_group(0, b"abd"));
        assert!(small.outboard().is_empty());
    }
}
