//! Who the client is behind a trusted proxy (`--trusted-proxy CIDR`): the
//! client address from `X-Forwarded-For` or `Forwarded: for=`, and the scheme
//! from `X-Forwarded-Proto` or `Forwarded: proto=`. Only a connection from a
//! trusted proxy may name them; from anyone else the headers are dropped, so a
//! visitor cannot pose as another address.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener reports them).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// One `for=` node of a `Forwarded` element: `1.2.3.4`, `"1.2.3.4:80"`,
/// `"[2001:db8::1]:80"`; `None` for obfuscated or unknown nodes.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let (host, _port) = s.rsplit_once(':')?;
    host.parse().ok()
}

/// The addresses the request passed through, client first, as the proxies
/// wrote them (`Forwarded` wins over `X-Forwarded-For`).
fn chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(v))?
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(parse_node)
        .collect()
}

/// The client's address for a request that came from a trusted proxy: the
/// nearest address in the chain that is not itself a trusted proxy (walking
/// from the proxy back toward the client). `None` when the headers name none.
pub fn client_ip(headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let chain = chain(headers);
    let mut last = None;
    for node in chain.iter().rev() {
        let ip = (*node)?;
        if !is_trusted(ip, trusted) {
            return Some(canonical(ip));
        }
        last = Some(canonical(ip));
    }
    last
}

/// The scheme the client used, as a trusted proxy tells it (`http`/`https`).
pub fn scheme(headers: &HeaderMap) -> Option<&'static str> {
    let named = headers
        .get("forwarded")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').next()?.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("proto")
                    .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
            })
        })
        .or_else(|| {
            headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().to_ascii_lowercase())
        })?;
    match named.as_str() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    }
}

/// The headers only a trusted proxy may send.
pub const HEADERS: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_nearest_untrusted_address_is_the_client() {
        let t = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.1.2.3")]);
        // 6.6.6.6 is whatever the client claimed; 203.0.113.7 is who reached
        // the trusted proxy chain.
        assert_eq!(client_ip(&h, &t), "203.0.113.7".parse().ok());
        let h = headers(&[(
            "forwarded",
            "for=198.51.100.2;proto=https, for=\"[2001:db8::1]:4711\"",
        )]);
        assert_eq!(client_ip(&h, &t), "2001:db8::1".parse().ok());
        assert_eq!(scheme(&h), Some("https"));
        let h = headers(&[("forwarded", "for=\"198.51.100.2:80\"")]);
        assert_eq!(client_ip(&h, &t), "198.51.100.2".parse().ok());
        assert_eq!(client_ip(&headers(&[]), &t), None);
        assert_eq!(
            client_ip(&headers(&[("x-forwarded-for", "garbage")]), &t),
            None
        );
        assert_eq!(
            scheme(&headers(&[("x-forwarded-proto", "HTTPS")])),
            Some("https")
        );
        assert_eq!(scheme(&headers(&[("x-forwarded-proto", "gopher")])), None);
    }

    #[test]
    fn trust_is_by_cidr_and_mapped_addresses_count() {
        let t = nets(&["10.0.0.0/8", "::1/128"]);
        assert!(is_trusted("10.9.8.7".parse().unwrap(), &t));
        assert!(is_trusted("::ffff:10.0.0.1".parse().unwrap(), &t));
        assert!(is_trusted("::1".parse().unwrap(), &t));
        assert!(!is_trusted("11.0.0.1".parse().unwrap(), &t));
        assert!(!is_trusted("10.0.0.1".parse().unwrap(), &[]));
    }
}
