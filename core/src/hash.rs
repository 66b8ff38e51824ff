//! Object hashes: BLAKE3 digests, written as 64 lowercase hex digits.
//!
//! The hash of an object always comes from the coordination server; peers only ever
//! serve bytes that the receiver checks against it (DESIGN B1). Cache files are named
//! by [`ObjectHash::to_hex`] alone, so parsing here is also the path-safety check.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A BLAKE3 digest of an object's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectHash([u8; 32]);

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a BLAKE3 hash (want 64 hex digits): {0:?}")]
pub struct InvalidHash(pub String);

impl ObjectHash {
    /// Hashes a whole buffer.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits; safe to use as a file name.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

/// Exactly `N` bytes from `2 × N` hex digits (keys and signatures), or `None`.
pub fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl fmt::Display for ObjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectHash({})", self.to_hex())
    }
}

impl FromStr for ObjectHash {
    type Err = InvalidHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(InvalidHash(s.chars().take(80).collect()));
        }
        blake3::Hash::from_hex(s)
            .map(|h| Self(*h.as_bytes()))
            .map_err(|_| InvalidHash(s.to_string()))
    }
}

impl Serialize for ObjectHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ObjectHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hashing of a stream, for objects too large to hold at once.
#[derive(Default, Clone)]
pub struct StreamHasher {
    inner: blake3::Hasher,
    len: u64,
}

impl StreamHasher {
    /// Starts an empty hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing was fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(&self) -> ObjectHash {
        ObjectHash(*self.inner.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_non_hex_and_path_tricks() {
        for bad in [
            "",
            "../etc/passwd",
            &"A".repeat(64),
            &"0".repeat(63),
            &"g".repeat(64),
        ] {
            assert!(
                bad.parse::<ObjectHash>().is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    proptest! {
        #[test]
        fn fixed_hex_decodes_only_its_own_length(bytes in proptest::array::uniform32(any::<u8>())) {
            let text = hex::encode(bytes);
            prop_assert_eq!(decode_hex::<32>(&text), Some(bytes));
            prop_assert_eq!(decode_hex::<31>(&text), None);
            prop_assert_eq!(decode_hex::<32>(&text[..62]), None);
        }

        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let h = ObjectHash::from_bytes(bytes);
            prop_assert_eq!(h.to_hex().parse::<ObjectHash>().unwrap(), h);
            let json = serde_json::to_string(&h).unwrap();
            prop_assert_eq!(serde_json::from_str::<ObjectHash>(&json).unwrap(), h);
        }

        #[test]
        fn stream_hash_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..5000), cut in 0usize..5000) {
            let cut = cut.min(data.len());
            let mut s = StreamHasher::new();
            s.update(&data[..cut]);
            s.update(&data[cut..]);
            prop_assert_eq!(s.finish(), ObjectHash::of(&data));
            prop_assert_eq!(s.len(), data.len() as u64);
        }
    }
}
