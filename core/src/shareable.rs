//! Which exchanges may ever go through peers (DESIGN B2).
//!
//! A response may be shared only if a *shared* cache could store it (RFC 9111 §3 and
//! §5.2: not `private`, not `no-store`, and not `Authorization`-bound unless `public`
//! or `s-maxage` allow it) and, stricter than RFC 9111, never when the request
//! carried `Cookie` or `Authorization`, the response sets a cookie, or it varies on
//! `Cookie`/`Authorization`. Only `GET` is shared. The server, the host and the
//! extension apply these same functions.

/// Why an exchange is not shareable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotShareable {
    /// Only GET requests are shared.
    #[error("method is not GET")]
    Method,
    /// The request carried credentials.
    #[error("request carries Cookie or Authorization")]
    Credentials,
    /// `Cache-Control: private` or `no-store`.
    #[error("Cache-Control forbids a shared cache")]
    CacheControl,
    /// The response sets a cookie.
    #[error("response has Set-Cookie")]
    SetCookie,
    /// The response varies on credentials (or on everything).
    #[error("response varies on Cookie, Authorization or *")]
    Vary,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// May this request be sent through the gateway / answered with a referral?
pub fn request_shareable(method: &str, headers: &[(String, String)]) -> Result<(), NotShareable> {
    if !method.eq_ignore_ascii_case("GET") {
        return Err(NotShareable::Method);
    }
    if header(headers, "cookie").next().is_some()
        || header(headers, "authorization").next().is_some()
    {
        return Err(NotShareable::Credentials);
    }
    Ok(())
}

/// May this response be stored by a shared cache and served to other peers?
pub fn response_shareable(headers: &[(String, String)]) -> Result<(), NotShareable> {
    for value in header(headers, "cache-control") {
        for directive in value.split(',') {
            let name = directive.split('=').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store") {
                return Err(NotShareable::CacheControl);
            }
        }
    }
    if header(headers, "set-cookie").next().is_some() {
        return Err(NotShareable::SetCookie);
    }
    for value in header(headers, "vary") {
        for field in value.split(',') {
            let f = field.trim();
            if f == "*"
                || f.eq_ignore_ascii_case("cookie")
                || f.eq_ignore_ascii_case("authorization")
            {
                return Err(NotShareable::Vary);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn examples() {
        assert!(request_shareable("GET", &h(&[("Accept", "*/*")])).is_ok());
        assert_eq!(request_shareable("POST", &[]), Err(NotShareable::Method));
        assert_eq!(
            request_shareable("GET", &h(&[("Cookie", "a=b")])),
            Err(NotShareable::Credentials)
        );
        assert!(response_shareable(&h(&[("Cache-Control", "public, max-age=60")])).is_ok());
        assert_eq!(
            response_shareable(&h(&[("cache-control", "max-age=0, Private")])),
            Err(NotShareable::CacheControl)
        );
        assert_eq!(
            response_shareable(&h(&[("Set-Cookie", "s=1")])),
            Err(NotShareable::SetCookie)
        );
        assert_eq!(
            response_shareable(&h(&[("Vary", "Accept, Cookie")])),
            Err(NotShareable::Vary)
        );
    }

    proptest! {
        #[test]
        fn set_cookie_is_never_shareable(others in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..6), v in "[ -~]{0,30}") {
            let mut headers: Vec<(String, String)> = others;
            headers.push(("SET-COOKIE".into(), v));
            prop_assert!(response_shareable(&headers).is_err());
        }

        #[test]
        fn credentials_are_never_shareable(others in proptest::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..6), auth in any::<bool>()) {
            let mut headers: Vec<(String, String)> = others;
            headers.push((if auth { "authorization" } else { "Cookie" }.into(), "x".into()));
            prop_assert!(request_shareable("GET", &headers).is_err());
        }
    }
}
