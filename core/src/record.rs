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
        let key_bytes = crate::hash::decode_hex::<32>(public_hex).ok_or(RecordError::BadKey)?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| RecordError::BadKey)?;
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
