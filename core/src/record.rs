//! Signed object records (DESIGN B8): the server signs what it says about an
//! object (URL, hash, size, media type, expiry) with its Ed25519 key. Peers keep
//! the signed record next to the object and pass it on, so a client that pinned
//! the server's key on an earlier visit can trust a hash it gets from a peer while
//! the server is down. A record that does not verify, or has expired, is never
//! used.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::hash::ObjectHash;

/// What the server vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The URL the object was served at.
    pub url: String,
    /// BLAKE3 of its bytes.
    pub hash: ObjectHash,
    /// Its size.
    pub size: u64,
    /// Its media type.
    pub content_type: String,
    /// Unix seconds after which the record is not used.
    pub expires: u64,
}

/// A record with the server's signature over its canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// The record.
    pub record: ObjectRecord,
    /// Ed25519 signature, 128 hex digits.
    pub signature: String,
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The signature is malformed or not the pinned key's.
    #[error("record signature does not verify against the pinned server key")]
    BadSignature,
    /// The record has expired.
    #[error("record expired")]
    Expired,
    /// The record is for another URL.
    #[error("record is for another URL")]
    WrongUrl,
    /// The key is malformed.
    #[error("malformed server key")]
    BadKey,
}

/// Most rotation statements a server publishes (and a client follows).
pub const MAX_ROTATIONS: usize = 32;

/// A key rotation announced by the server: the new key, signed by the old one,
/// so a client that pinned the old key can pin the new one (issue 14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    /// The key rotated from, 64 hex digits.
    pub old_key: String,
    /// The key rotated to, 64 hex digits.
    pub new_key: String,
    /// Ed25519 signature by `old_key` over the statement, 128 hex digits.
    pub signature: String,
}

/// Why a presented key was not accepted in place of the pinned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// No chain of statements leads from the pinned key to the presented one.
    #[error("no rotation statement leads from the pinned key to the presented one")]
    NoChain,
    /// A statement on the chain does not verify against its old key.
    #[error("a key rotation statement does not verify")]
    BadStatement,
}

fn rotation_message(old_key: &str, new_key: &str) -> Vec<u8> {
    format!("peercache key rotation v1\n{old_key}\n{new_key}").into_bytes()
}

fn verifying_key(public_hex: &str) -> Result<VerifyingKey, RecordError> {
    let key_bytes = crate::hash::decode_hex::<32>(public_hex).ok_or(RecordError::BadKey)?;
    VerifyingKey::from_bytes(&key_bytes).map_err(|_| RecordError::BadKey)
}

impl KeyRotation {
    /// True when the statement is signed by its old key.
    pub fn verifies(&self) -> bool {
        let Ok(key) = verifying_key(&self.old_key) else {
            return false;
        };
        let Some(sig) = crate::hash::decode_hex::<64>(&self.signature) else {
            return false;
        };
        key.verify(
            &rotation_message(&self.old_key, &self.new_key),
            &Signature::from_bytes(&sig),
        )
        .is_ok()
    }
}

/// Whether a client that pinned `pinned` may pin `presented`: the same key, or
/// a chain of verified statements from `pinned` to `presented` among the first
/// [`MAX_ROTATIONS`] of `rotations` (in any order).
pub fn follow_rotations(
    pinned: &str,
    presented: &str,
    rotations: &[KeyRotation],
) -> Result<(), RotationError> {
    let rotations = &rotations[..rotations.len().min(MAX_ROTATIONS)];
    // The keys reachable from the pinned one by verified statements (a key
    // rotated to but never used, e.g. after a crash, does not break the chain).
    let mut reachable = vec![pinned.to_ascii_lowercase()];
    let mut bad = false;
    loop {
        let before = reachable.len();
        for r in rotations {
            let (old, new) = (
                r.old_key.to_ascii_lowercase(),
                r.new_key.to_ascii_lowercase(),
            );
            if !reachable.contains(&old) || reachable.contains(&new) {
                continue;
            }
            if r.verifies() {
                reachable.push(new);
            } else {
                bad = true;
            }
        }
        if reachable.len() == before {
            break;
        }
    }
    match (reachable.contains(&presented.to_ascii_lowercase()), bad) {
        (true, _) => Ok(()),
        (false, true) => Err(RotationError::BadStatement),
        (false, false) => Err(RotationError::NoChain),
    }
}

fn canonical(record: &ObjectRecord) -> Vec<u8> {
    // Field order is fixed by the struct, so the encoding is deterministic.
    serde_json::to_vec(record).unwrap_or_default()
}

/// The server's signing key.
#[derive(Clone)]
pub struct RecordSigner {
    key: SigningKey,
}

impl std::fmt::Debug for RecordSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSigner")
            .field("public", &self.public_hex())
            .finish()
    }
}

impl RecordSigner {
    /// A signer from 32 secret bytes (the caller draws them from a CSPRNG).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The secret bytes (to persist the key).
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key, 64 hex digits (what clients pin).
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The statement announcing a rotation from this key to `new`.
    pub fn rotate_to(&self, new: &RecordSigner) -> KeyRotation {
        let (old_key, new_key) = (self.public_hex(), new.public_hex());
        let sig = self.key.sign(&rotation_message(&old_key, &new_key));
        KeyRotation {
            old_key,
            new_key,
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Signs a record.
    pub fn sign(&self, record: ObjectRecord) -> SignedRecord {
        let sig = self.key.sign(&canonical(&record));
        SignedRecord {
            record,
            signature: hex::encode(sig.to_bytes()),
        }
    }
}

impl SignedRecord {
    /// Checks the signature against `public_hex`, the URL and the expiry.
    pub fn verify(
        &self,
        public_hex: &str,
        url: &str,
        now_secs: u64,
    ) -> Result<&ObjectRecord, RecordError> {
        let key = verifying_key(public_hex)?;
        let sig =
            crate::hash::decode_hex::<64>(&self.signature).ok_or(RecordError::BadSignature)?;
        key.verify(&canonical(&self.record), &Signature::from_bytes(&sig))
            .map_err(|_| RecordError::BadSignature)?;
        if self.record.url != url {
            return Err(RecordError::WrongUrl);
        }
        if self.record.expires < now_secs {
            return Err(RecordError::Expired);
        }
        Ok(&self.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(url: &str) -> ObjectRecord {
        ObjectRecord {
            url: url.into(),
            hash: ObjectHash::of(b"x"),
            size: 1,
            content_type: "text/plain".into(),
            expires: 1000,
        }
    }

    #[test]
    fn sign_verify_and_every_refusal() {
        let signer = RecordSigner::from_secret([7; 32]);
        let other = RecordSigner::from_secret([8; 32]);
        let signed = signer.sign(record("https://s/a"));
        assert!(
            signed
                .verify(&signer.public_hex(), "https://s/a", 999)
                .is_ok()
        );
        assert_eq!(
            signed.verify(&other.public_hex(), "https://s/a", 999),
            Err(RecordError::BadSignature)
        );
        assert_eq!(
            signed.verify(&signer.public_hex(), "https://s/b", 999),
            Err(RecordError::WrongUrl)
        );
        assert_eq!(
            signed.verify(&signer.public_hex(), "https://s/a", 1001),
            Err(RecordError::Expired)
        );
        assert_eq!(
            signed.verify("zz", "https://s/a", 1),
            Err(RecordError::BadKey)
        );
        let mut forged = signed.clone();
        forged.record.hash = ObjectHash::of(b"evil");
        assert_eq!(
            forged.verify(&signer.public_hex(), "https://s/a", 999),
            Err(RecordError::BadSignature)
        );
        let json = serde_json::to_string(&signed).unwrap();
        let back: SignedRecord = serde_json::from_str(&json).unwrap();
        assert!(
            back.verify(&signer.public_hex(), "https://s/a", 999)
                .is_ok()
        );
    }

    #[test]
    fn a_rotation_chain_is_followed_only_when_every_statement_verifies() {
        let (a, b, c) = (
            RecordSigner::from_secret([1; 32]),
            RecordSigner::from_secret([2; 32]),
            RecordSigner::from_secret([3; 32]),
        );
        let (ab, bc) = (a.rotate_to(&b), b.rotate_to(&c));
        let (pa, pb, pc) = (a.public_hex(), b.public_hex(), c.public_hex());
        assert_eq!(follow_rotations(&pa, &pa, &[]), Ok(()));
        assert_eq!(
            follow_rotations(&pa, &pb, std::slice::from_ref(&ab)),
            Ok(())
        );
        assert_eq!(
            follow_rotations(&pa, &pc, &[bc.clone(), ab.clone()]),
            Ok(()),
            "two rotations, listed in any order"
        );
        assert_eq!(
            follow_rotations(&pa, &pc, std::slice::from_ref(&bc)),
            Err(RotationError::NoChain)
        );
        assert_eq!(
            follow_rotations(&pb, &pa, std::slice::from_ref(&ab)),
            Err(RotationError::NoChain),
            "no way back"
        );
        // A statement for a key the attacker made, "signed" by someone else.
        let evil = RecordSigner::from_secret([9; 32]);
        let mut forged = evil.rotate_to(&evil);
        forged.old_key = pa.clone();
        forged.new_key = evil.public_hex();
        assert_eq!(
            follow_rotations(&pa, &evil.public_hex(), &[forged]),
            Err(RotationError::BadStatement)
        );
        let json = serde_json::to_string(&ab).unwrap();
        assert!(
            serde_json::from_str::<KeyRotation>(&json)
                .unwrap()
                .verifies()
        );
    }

    proptest! {
        #[test]
        fn any_tampered_signature_is_refused(i in 0usize..128, c in "[0-9a-f]") {
            let signer = RecordSigner::from_secret([3; 32]);
            let mut signed = signer.sign(record("u"));
            let mut chars: Vec<char> = signed.signature.chars().collect();
            let new = c.chars().next().unwrap();
            prop_assume!(chars[i] != new);
            chars[i] = new;
            signed.signature = chars.into_iter().collect();
            prop_assert!(signed.verify(&signer.public_hex(), "u", 0).is_err());
        }
    }
}
