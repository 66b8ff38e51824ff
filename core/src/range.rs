//! Which bytes a `GET` of a whole object gets (RFC 9110 §14): all of it, one
//! range of it (`206`), or nothing (`416`).
//!
//! The rule, in one place so the server's site and a host's peer server answer
//! alike:
//! - no `Range` header (or one that is not text): the whole object;
//! - an `If-Range` that does not name this version (its strong validator): the
//!   whole object, so a client never splices two versions;
//! - a single byte range inside the object: that range;
//! - a single range that starts at or past the end: `416`;
//! - anything else (several ranges, other units, garbage): the whole object,
//!   which is always a correct answer to a `GET`.
//!
//! Goals: one pure function over header values. Non-goals: multipart ranges,
//! date-valued `If-Range` (only strong validators are compared).

use crate::headers::parse_range;

/// What a request gets of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeChoice {
    /// The whole object (`200`).
    Whole,
    /// The inclusive byte range `first..=last` (`206`).
    Part {
        /// First byte.
        first: u64,
        /// Last byte (inclusive).
        last: u64,
    },
    /// Nothing: the range starts at or past the end (`416`).
    NotSatisfiable,
}

impl RangeChoice {
    /// The inclusive range, if a part was chosen.
    pub fn part(self) -> Option<(u64, u64)> {
        match self {
            RangeChoice::Part { first, last } => Some((first, last)),
            _ => None,
        }
    }
}

/// The bytes an inclusive range `first..=last` (or the whole object, `None`)
/// covers in an object of `size` bytes, as `(offset, length)`; `None` when the
/// range is reversed or reaches past the end. The server's `/v1/objects` and a
/// host's peer server both serve through it.
pub fn span(range: Option<(u64, u64)>, size: u64) -> Option<(u64, u64)> {
    match range {
        None => Some((0, size)),
        Some((first, last)) if first <= last && last < size => Some((first, last - first + 1)),
        Some(_) => None,
    }
}

/// Chooses what a `GET` gets of an object of `size` bytes whose strong
/// validator (`ETag`, quotes included) is `etag`. `range` is the `Range` header
/// as text (`None` when absent or not text); `if_range` is the raw `If-Range`
/// header, if any.
pub fn choose_range(
    range: Option<&str>,
    if_range: Option<&[u8]>,
    etag: &str,
    size: u64,
) -> RangeChoice {
    let Some(value) = range else {
        return RangeChoice::Whole;
    };
    if if_range.is_some_and(|tag| tag != etag.as_bytes()) {
        return RangeChoice::Whole;
    }
    if let Ok((first, last)) = parse_range(value, size) {
        return RangeChoice::Part { first, last };
    }
    let starts_past_end = value
        .trim()
        .strip_prefix("bytes=")
        .filter(|spec| !spec.contains(','))
        .and_then(|spec| spec.split_once('-'))
        .and_then(|(first, _)| first.trim().parse::<u64>().ok())
        .is_some_and(|first| first >= size);
    if starts_past_end {
        RangeChoice::NotSatisfiable
    } else {
        RangeChoice::Whole
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_span_is_inside_the_object_or_nothing() {
        assert_eq!(span(None, 10), Some((0, 10)));
        assert_eq!(span(Some((2, 4)), 10), Some((2, 3)));
        assert_eq!(span(Some((9, 9)), 10), Some((9, 1)));
        assert_eq!(span(Some((4, 2)), 10), None);
        assert_eq!(span(Some((0, 10)), 10), None);
    }

    use super::*;
    use proptest::prelude::*;

    const TAG: &str = "\"abc\"";

    #[test]
    fn the_rule_case_by_case() {
        let c = |range, if_range: Option<&str>| {
            choose_range(range, if_range.map(str::as_bytes), TAG, 1000)
        };
        assert_eq!(c(None, None), RangeChoice::Whole);
        assert_eq!(
            c(Some("bytes=0-99"), None),
            RangeChoice::Part { first: 0, last: 99 }
        );
        assert_eq!(c(Some("bytes=-100"), None).part(), Some((900, 999)));
        // The right version: the range; another version: the whole object.
        assert_eq!(c(Some("bytes=10-"), Some(TAG)).part(), Some((10, 999)));
        assert_eq!(c(Some("bytes=10-"), Some("\"old\"")), RangeChoice::Whole);
        // Past the end: 416, even with a matching If-Range.
        assert_eq!(c(Some("bytes=1000-"), None), RangeChoice::NotSatisfiable);
        assert_eq!(
            c(Some("bytes=5000-6000"), Some(TAG)),
            RangeChoice::NotSatisfiable
        );
        // Not understood: the whole object.
        for odd in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=5-1",
            "bytes=x-",
            "bytes=-0",
        ] {
            assert_eq!(c(Some(odd), None), RangeChoice::Whole, "{odd}");
        }
        // An empty object has no byte to start at.
        assert_eq!(
            choose_range(Some("bytes=0-"), None, TAG, 0),
            RangeChoice::NotSatisfiable
        );
    }

    proptest! {
        #[test]
        fn parts_stay_inside_and_mismatched_validators_get_everything(
            v in ".{0,40}", size in 0u64..10_000, tag in ".{0,8}") {
            match choose_range(Some(&v), None, TAG, size) {
                RangeChoice::Part { first, last } => prop_assert!(first <= last && last < size),
                RangeChoice::NotSatisfiable | RangeChoice::Whole => {}
            }
            if tag != TAG {
                prop_assert_eq!(
                    choose_range(Some(&v), Some(tag.as_bytes()), TAG, size),
                    RangeChoice::Whole
                );
            }
        }
    }
}
