//! A peer is its key (DESIGN B6): every request a host makes to the server about
//! itself (register, announce, report) carries a `Peercache-Auth` header signed
//! with the host's Ed25519 secret key, whose public half is the peer id. The
//! server acts on the request only when the signature verifies for the id the
//! body names, over this exact method, path, body and a recent timestamp.
//!
//! The header: `Peercache-Auth: id=<64 hex>; ts=<unix seconds>; sig=<128 hex>`.
//! The signed message is
//! `peercache-auth-v1\n<METHOD>\n<path>\n<ts>\n<blake3 of the body, hex>`.
//!
//! The same key is the host's iroh endpoint key, so the id the server lists is the
//! key other peers dial and authenticate at the QUIC handshake.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// How far a request's timestamp may be from the server's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Peercache-Auth` header.
    #[error("missing Peercache-Auth header")]
    Missing,
    /// The header is not `id=…; ts=…; sig=…`.
    #[error("malformed Peercache-Auth header")]
    Malformed,
    /// The id is not a valid Ed25519 public key.
    #[error("the peer id is not a public key")]
    BadKey,
    /// The timestamp is too far from the server's clock.
    #[error("the request's timestamp is more than {MAX_CLOCK_SKEW_SECS} s off")]
    Stale,
    /// The signature does not verify.
    #[error("the signature does not verify for this peer id")]
    BadSignature,
    /// The body names another peer than the key that signed it.
    #[error("the body names another peer id than the one that signed it")]
    WrongPeer,
}

/// A parsed `Peercache-Auth` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    /// The signer's peer id (its public key, 64 hex digits).
    pub id: String,
    /// Unix seconds when it was signed.
    pub ts: u64,
    /// The signature, 64 bytes.
    pub sig: [u8; 64],
}

/// True when `id` has the form of a peer key: 64 lowercase hex digits.
pub fn is_peer_key(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The peer id (public key, hex) of a 32-byte secret key.
pub fn peer_id_of(secret: &[u8; 32]) -> String {
    hex::encode(SigningKey::from_bytes(secret).verifying_key().as_bytes())
}

/// The 32 bytes of a peer id, if it is one.
pub fn peer_key_bytes(id: &str) -> Option<[u8; 32]> {
    if !is_peer_key(id) {
        return None;
    }
    crate::hash::decode_hex::<32>(id)
}

fn message(method: &str, path: &str, ts: u64, body: &[u8]) -> Vec<u8> {
    format!(
        "peercache-auth-v1\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        ts,
        blake3::hash(body).to_hex()
    )
    .into_bytes()
}

/// Signs a request; returns the `Peercache-Auth` header value.
pub fn sign_request(secret: &[u8; 32], method: &str, path: &str, ts: u64, body: &[u8]) -> String {
    let key = SigningKey::from_bytes(secret);
    let sig = key.sign(&message(method, path, ts, body));
    format!(
        "id={}; ts={ts}; sig={}",
        hex::encode(key.verifying_key().as_bytes()),
        hex::encode(sig.to_bytes())
    )
}

impl AuthHeader {
    /// Parses `id=…; ts=…; sig=…` (any order; unknown parts are an error).
    pub fn parse(value: &str) -> Result<Self, AuthError> {
        if value.len() > 512 {
            return Err(AuthError::Malformed);
        }
        let (mut id, mut ts, mut sig) = (None, None, None);
        for part in value.split(';') {
            let (k, v) = part.trim().split_once('=').ok_or(AuthError::Malformed)?;
            match k.trim() {
                "id" if id.is_none() => id = Some(v.trim().to_string()),
                "ts" if ts.is_none() => {
                    ts = Some(v.trim().parse().map_err(|_| AuthError::Malformed)?)
                }
                "sig" if sig.is_none() => {
                    sig = Some(crate::hash::decode_hex::<64>(v.trim()).ok_or(AuthError::Malformed)?)
                }
                _ => return Err(AuthError::Malformed),
            }
        }
        let id = id.ok_or(AuthError::Malformed)?;
        if !is_peer_key(&id) {
            return Err(AuthError::BadKey);
        }
        Ok(Self {
            id,
            ts: ts.ok_or(AuthError::Malformed)?,
            sig: sig.ok_or(AuthError::Malformed)?,
        })
    }

    /// Checks the signature over `method`, `path` and `body`, and that `ts` is
    /// within [`MAX_CLOCK_SKEW_SECS`] of `now` (unix seconds).
    pub fn verify(&self, method: &str, path: &str, body: &[u8], now: u64) -> Result<(), AuthError> {
        if self.ts.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
            return Err(AuthError::Stale);
        }
        let bytes = peer_key_bytes(&self.id).ok_or(AuthError::BadKey)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| AuthError::BadKey)?;
        key.verify(
            &message(method, path, self.ts, body),
            &Signature::from_bytes(&self.sig),
        )
        .map_err(|_| AuthError::BadSignature)
    }
}

/// Parses and verifies a header in one step; returns the authenticated peer id.
pub fn authenticate(
    header: Option<&str>,
    method: &str,
    path: &str,
    body: &[u8],
    now: u64,
) -> Result<String, AuthError> {
    let h = AuthHeader::parse(header.ok_or(AuthError::Missing)?)?;
    h.verify(method, path, body, now)?;
    Ok(h.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    #[test]
    fn a_signed_request_verifies_and_names_its_key() {
        let v = sign_request(&SECRET, "post", "/v1/announce", 1000, b"{}");
        let id = authenticate(Some(&v), "POST", "/v1/announce", b"{}", 1010).unwrap();
        assert_eq!(id, peer_id_of(&SECRET));
        assert!(is_peer_key(&id));
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let v = sign_request(&SECRET, "POST", "/v1/announce", 1000, b"{\"a\":1}");
        let bad = [
            authenticate(Some(&v), "POST", "/v1/announce", b"{\"a\":2}", 1000),
            authenticate(Some(&v), "POST", "/v1/report", b"{\"a\":1}", 1000),
            authenticate(Some(&v), "GET", "/v1/announce", b"{\"a\":1}", 1000),
        ];
        for b in bad {
            assert_eq!(b, Err(AuthError::BadSignature));
        }
        // The same signature under another id.
        let other = peer_id_of(&[9; 32]);
        let swapped = format!("id={other}; {}", v.split_once("; ").unwrap().1);
        assert_eq!(
            authenticate(Some(&swapped), "POST", "/v1/announce", b"{\"a\":1}", 1000),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn stale_missing_and_garbage_headers_are_refused() {
        let v = sign_request(&SECRET, "POST", "/p", 1000, b"");
        assert_eq!(
            authenticate(Some(&v), "POST", "/p", b"", 1000 + MAX_CLOCK_SKEW_SECS + 1),
            Err(AuthError::Stale)
        );
        assert_eq!(
            authenticate(None, "POST", "/p", b"", 1000),
            Err(AuthError::Missing)
        );
        for g in [
            "",
            "id=abc; ts=1; sig=00",
            "ts=1",
            "id=x; id=y",
            &"x".repeat(600),
        ] {
            assert!(authenticate(Some(g), "POST", "/p", b"", 1).is_err(), "{g}");
        }
    }
}
