//! A client's conditional `GET`/`HEAD` (RFC 9110 §13): is the stored version
//! the one the client already holds, so a `304 Not Modified` answers it?
//!
//! The rule, in one place for the server's site (root and upstream mode):
//! - `If-None-Match` present: `304` when one of its entity tags matches the
//!   stored `ETag` by the weak comparison (or it is `*` and there is a stored
//!   response); `If-Modified-Since` is then ignored (§13.1.3);
//! - otherwise `If-Modified-Since`, a valid HTTP date: `304` when the stored
//!   `Last-Modified` is a valid date no later than it;
//! - anything unparsable never yields a `304` (the full response is always a
//!   correct answer).
//!
//! Non-goals: `If-Match` / `If-Unmodified-Since` (state-changing requests go to
//! the origin, which evaluates them).

use std::time::SystemTime;

/// The stored response's validators.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validators<'a> {
    /// Its `ETag` (quotes included, maybe `W/`).
    pub etag: Option<&'a str>,
    /// Its `Last-Modified`, as sent.
    pub last_modified: Option<&'a str>,
}

/// The request's conditional headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditions<'a> {
    /// `If-None-Match`, as text.
    pub if_none_match: Option<&'a str>,
    /// `If-Modified-Since`, as text.
    pub if_modified_since: Option<&'a str>,
}

/// Strips the weak prefix: the weak comparison of RFC 9110 §8.8.3.2.
fn opaque(tag: &str) -> &str {
    let tag = tag.trim();
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// True when the client's copy is current: answer `304`.
pub fn not_modified(conditions: Conditions<'_>, stored: Validators<'_>) -> bool {
    if let Some(inm) = conditions.if_none_match {
        if inm.trim() == "*" {
            return true;
        }
        let Some(etag) = stored.etag else {
            return false;
        };
        let etag = opaque(etag);
        return inm
            .split(',')
            .map(opaque)
            .any(|t| !t.is_empty() && t == etag);
    }
    let (Some(ims), Some(lm)) = (conditions.if_modified_since, stored.last_modified) else {
        return false;
    };
    match (parse_date(ims), parse_date(lm)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// An HTTP date (IMF-fixdate, RFC 850 or asctime), or `None`.
pub fn parse_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

/// `t` as an IMF-fixdate (`Last-Modified`, `Date`).
pub fn format_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LM: &str = "Tue, 01 Dec 2026 10:00:00 GMT";

    fn v(etag: Option<&'static str>) -> Validators<'static> {
        Validators {
            etag,
            last_modified: Some(LM),
        }
    }

    fn inm(s: &'static str) -> Conditions<'static> {
        Conditions {
            if_none_match: Some(s),
            if_modified_since: None,
        }
    }

    fn ims(s: &'static str) -> Conditions<'static> {
        Conditions {
            if_none_match: None,
            if_modified_since: Some(s),
        }
    }

    #[test]
    fn entity_tags_compare_weakly() {
        assert!(not_modified(inm("\"a\""), v(Some("\"a\""))));
        assert!(not_modified(inm("W/\"a\""), v(Some("\"a\""))));
        assert!(not_modified(inm("\"b\", W/\"a\""), v(Some("W/\"a\""))));
        assert!(!not_modified(inm("\"b\""), v(Some("\"a\""))));
        assert!(!not_modified(inm("\"a\""), v(None)));
        assert!(not_modified(inm("*"), v(None)));
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let c = Conditions {
            if_none_match: Some("\"b\""),
            if_modified_since: Some(LM),
        };
        assert!(!not_modified(c, v(Some("\"a\""))));
    }

    #[test]
    fn dates_compare_and_garbage_never_matches() {
        assert!(not_modified(ims(LM), v(None)));
        assert!(not_modified(ims("Tue, 01 Dec 2026 11:00:00 GMT"), v(None)));
        assert!(!not_modified(ims("Tue, 01 Dec 2026 09:00:00 GMT"), v(None)));
        assert!(!not_modified(ims("yesterday"), v(None)));
        let no_lm = Validators {
            etag: None,
            last_modified: Some("0"),
        };
        assert!(!not_modified(ims(LM), no_lm));
    }
}
