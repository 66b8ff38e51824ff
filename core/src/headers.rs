//! The three HTTP headers of the protocol, parsed and written in one place.
//!
//! - `Peercache-Client: id=<peer id>; bw=<bytes per second>` on a request says the
//!   client accepts a referral (a `300`), who it is and how fast it can receive.
//! - `Peercache-Object: blake3=<hex>; size=<bytes>` on every `200` from the server
//!   names the object's hash and size, so the bytes can be checked and announced.
//! - `Peercache: scope="/static/"` on a site's responses advertises which paths may
//!   be fetched through peers (site enrolment, DESIGN section 4).
//!
//! The syntax is `key=value` pairs separated by `;`, values optionally quoted.

use crate::hash::{InvalidHash, ObjectHash};

/// Request header: the client accepts referrals.
pub const CLIENT: &str = "peercache-client";
/// `Peercache-Auth`: a request signed with the peer's key (`crate::auth`).
pub const AUTH: &str = "peercache-auth";
/// Response header: hash and size of the object in a `200`.
pub const OBJECT: &str = "peercache-object";
/// Response header: the site's advertisement of its peer scope.
pub const ADVERTISEMENT: &str = "peercache";
/// Response header of a peer's `/v1/ping`: `active/limit` upload slots.
pub const LOAD: &str = "peercache-load";
/// Request header carrying the gateway's per-install token.
pub const GATEWAY_TOKEN: &str = "x-peercache-token";
/// Request header from the Firefox extension: answer with headers only, the body
/// comes from peers through the extension.
pub const HEADERS_ONLY: &str = "peercache-headers-only";
/// Response header: the server's signed record of the object, as hex of its JSON.
pub const RECORD: &str = "peercache-record";
/// Media type of a referral body.
pub const REFERRAL_CONTENT_TYPE: &str = "application/vnd.peercache.referral+json";

/// A header value that does not follow the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A required key is absent.
    #[error("header {header}: missing `{key}`")]
    Missing {
        /// Header name.
        header: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// A value could not be parsed.
    #[error("header {header}: bad value for `{key}`: {value:?}")]
    BadValue {
        /// Header name.
        header: &'static str,
        /// The key whose value is bad.
        key: &'static str,
        /// The offending value (truncated).
        value: String,
    },
    /// The hash is not a BLAKE3 hex digest.
    #[error(transparent)]
    Hash(#[from] InvalidHash),
}

fn pairs(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value.split(';').filter_map(|part| {
        let (k, v) = part.split_once('=')?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        Some((k.trim(), v))
    })
}

fn get<'a>(value: &'a str, key: &str) -> Option<&'a str> {
    pairs(value)
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn truncated(v: &str) -> String {
    v.chars().take(64).collect()
}

/// `Peercache-Client`: who asks, and how fast it can receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHeader {
    /// The requesting peer's id (as registered), if it has one yet.
    pub peer_id: Option<String>,
    /// The client's measured or declared download speed, bytes per second.
    pub bandwidth: Option<u64>,
}

impl ClientHeader {
    /// Parses the header value. Unknown keys are ignored for forward compatibility.
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let peer_id = match get(value, "id") {
            Some(id) if is_peer_id(id) => Some(id.to_string()),
            Some(id) => {
                return Err(HeaderError::BadValue {
                    header: CLIENT,
                    key: "id",
                    value: truncated(id),
                });
            }
            None => None,
        };
        let bandwidth = match get(value, "bw") {
            Some(bw) => Some(bw.parse().map_err(|_| HeaderError::BadValue {
                header: CLIENT,
                key: "bw",
                value: truncated(bw),
            })?),
            None => None,
        };
        Ok(Self { peer_id, bandwidth })
    }

    /// The header value.
    pub fn to_header_value(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = &self.peer_id {
            parts.push(format!("id={id}"));
        }
        if let Some(bw) = self.bandwidth {
            parts.push(format!("bw={bw}"));
        }
        if parts.is_empty() {
            parts.push("v=1".to_string());
        }
        parts.join("; ")
    }
}

/// Peer ids are 1–64 characters of `[A-Za-z0-9_-]`.
pub fn is_peer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `Peercache-Object`: the hash and size of the object in a `200`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    /// BLAKE3 of the body.
    pub hash: ObjectHash,
    /// Length of the body in bytes.
    pub size: u64,
}

impl ObjectHeader {
    /// Parses the header value.
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let hash = get(value, "blake3").ok_or(HeaderError::Missing {
            header: OBJECT,
            key: "blake3",
        })?;
        let size = get(value, "size").ok_or(HeaderError::Missing {
            header: OBJECT,
            key: "size",
        })?;
        Ok(Self {
            hash: hash.parse()?,
            size: size.parse().map_err(|_| HeaderError::BadValue {
                header: OBJECT,
                key: "size",
                value: truncated(size),
            })?,
        })
    }

    /// The header value.
    pub fn to_header_value(&self) -> String {
        format!("blake3={}; size={}", self.hash, self.size)
    }
}

/// `Peercache: scope="/static/"`: the path prefix a site lets peers deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Path prefix, starting with `/`.
    pub scope: String,
}

impl Advertisement {
    /// Parses the header value; the scope must be an absolute path without `..`.
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let scope = get(value, "scope").ok_or(HeaderError::Missing {
            header: ADVERTISEMENT,
            key: "scope",
        })?;
        if !scope.starts_with('/')
            || scope.contains("..")
            || scope.contains(['?', '#', '*', ' ', '"', '\\'])
        {
            return Err(HeaderError::BadValue {
                header: ADVERTISEMENT,
                key: "scope",
                value: truncated(scope),
            });
        }
        Ok(Self {
            scope: scope.to_string(),
        })
    }

    /// The header value.
    pub fn to_header_value(&self) -> String {
        format!("scope=\"{}\"", self.scope)
    }
}

/// A `Range` header that cannot be satisfied or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsatisfiable or unsupported Range")]
pub struct RangeError;

/// Parses a single-range `Range: bytes=…` header against an object of `size`
/// bytes. Returns the inclusive `(first, last)` byte positions. Multiple ranges
/// are not supported (an error, so the caller answers `416`).
pub fn parse_range(value: &str, size: u64) -> Result<(u64, u64), RangeError> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(RangeError)?;
    if spec.contains(',') || size == 0 {
        return Err(RangeError);
    }
    let (a, b) = spec.split_once('-').ok_or(RangeError)?;
    let (a, b) = (a.trim(), b.trim());
    let (first, last) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| RangeError)?;
        if n == 0 {
            return Err(RangeError);
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let first: u64 = a.parse().map_err(|_| RangeError)?;
        let last = if b.is_empty() {
            size - 1
        } else {
            b.parse::<u64>().map_err(|_| RangeError)?.min(size - 1)
        };
        (first, last)
    };
    if first > last || first >= size {
        return Err(RangeError);
    }
    Ok((first, last))
}

/// Encodes a signed record for the `Peercache-Record` header.
pub fn encode_record(record: &crate::record::SignedRecord) -> String {
    serde_json::to_vec(record)
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Decodes a `Peercache-Record` header (at most 8 KiB of JSON).
pub fn decode_record(value: &str) -> Option<crate::record::SignedRecord> {
    if !value.len().is_multiple_of(2) || value.len() > 16 * 1024 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..value.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(value.get(i..i + 2)?, 16).ok())
        .collect();
    serde_json::from_slice(&bytes?).ok()
}

/// Parses a `Content-Range: bytes first-last/total` header (a satisfied
/// range with a known total): `(first, last, total)`, or `None` for anything
/// else (an unknown total, `*`, `last` past the end, `first` after `last`).
pub fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let digits = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (first, last, total) = (digits(first)?, digits(last)?, digits(total)?);
    (first <= last && last < total).then_some((first, last, total))
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_range_is_read_strictly() {
        use super::parse_content_range as p;
        assert_eq!(p("bytes 0-99/100"), Some((0, 99, 100)));
        assert_eq!(
            p("bytes 262144-524287/33554432"),
            Some((262144, 524287, 33554432))
        );
        for bad in [
            "bytes 0-100/100",
            "bytes 5-4/100",
            "bytes */100",
            "bytes 0-99/*",
            "bytes -1-99/100",
            "items 0-99/100",
            "bytes 0-99",
            "bytes +0-99/100",
            "bytes 0-99999999999999999999999/100",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_examples() {
        let c = ClientHeader::parse("id=abc-1; bw=1000000").unwrap();
        assert_eq!(c.peer_id.as_deref(), Some("abc-1"));
        assert_eq!(c.bandwidth, Some(1_000_000));
        assert!(ClientHeader::parse("id=../x").is_err());
        assert!(ClientHeader::parse("bw=fast").is_err());
        let a = Advertisement::parse(r#"scope="/static/""#).unwrap();
        assert_eq!(a.scope, "/static/");
        assert!(Advertisement::parse(r#"scope="static""#).is_err());
        assert!(Advertisement::parse(r#"scope="/a/../b""#).is_err());
        assert!(ObjectHeader::parse("size=3").is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Ok((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Ok((900, 999)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Ok((990, 999)));
        for bad in [
            "bytes=1000-",
            "bytes=5-1",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-0",
            "bytes=x-",
        ] {
            assert!(parse_range(bad, 1000).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn ranges_stay_inside_the_object(v in ".{0,40}", size in 0u64..10_000) {
            if let Ok((a, b)) = parse_range(&v, size) {
                prop_assert!(a <= b && b < size);
            }
        }

        #[test]
        fn object_header_round_trips(bytes in proptest::array::uniform32(any::<u8>()), size in any::<u64>()) {
            let h = ObjectHeader { hash: ObjectHash::from_bytes(bytes), size };
            prop_assert_eq!(ObjectHeader::parse(&h.to_header_value()).unwrap(), h);
        }

        #[test]
        fn client_header_round_trips(id in "[A-Za-z0-9_-]{1,64}", bw in proptest::option::of(any::<u64>())) {
            let c = ClientHeader { peer_id: Some(id), bandwidth: bw };
            prop_assert_eq!(ClientHeader::parse(&c.to_header_value()).unwrap(), c);
        }

        #[test]
        fn parsers_never_panic(s in ".{0,200}") {
            let _ = ClientHeader::parse(&s);
            let _ = ObjectHeader::parse(&s);
            let _ = Advertisement::parse(&s);
        }
    }
}
