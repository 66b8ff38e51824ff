//! The extension's settings and the interception rules they produce.
//!
//! The wasm brain keeps a [`Settings`] value, feeds it browser events (a site
//! advertised itself, the user flipped a switch, the host reported its gateway)
//! and hands the shell the declarativeNetRequest rules of [`Settings::rules`].
//! Everything here is pure so it is tested natively; the wasm crate only converts
//! to and from JavaScript values.
//!
//! Rules (Chromium, DESIGN section 2): for each enabled site, requests for its
//! scope are redirected to `http://127.0.0.1:<port>/g/<original url>`, and one
//! `modifyHeaders` rule adds the gateway token to every request for the gateway,
//! so the token never appears in a URL. With the global toggle off, or no host,
//! there are no rules at all: pages load straight from the site.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::headers::{Advertisement, GATEWAY_TOKEN};
use crate::protocol::EnabledSite;

/// One site the extension has seen advertise itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteEntry {
    /// The advertised scope.
    pub scope: String,
    /// The user's switch.
    pub enabled: bool,
}

/// The workload and cache limits the user set in the popup (M12, M13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserLimits {
    /// Upload slots.
    pub max_uploads: u32,
    /// Upload cap in bytes per second (0 = none).
    pub upload_rate: u64,
    /// Cache size in bytes (0 = none).
    pub cache_max: u64,
}

/// Largest integer a JavaScript number holds exactly (2^53 − 1): limits stay
/// within it so they always convert to and from the extension's JavaScript.
pub const MAX_EXACT_JS: u64 = (1 << 53) - 1;

/// Most upload slots a host accepts.
pub const MAX_UPLOAD_SLOTS: u32 = 1024;

impl UserLimits {
    /// The same limits within what the host and JavaScript accept.
    pub fn clamped(self) -> Self {
        Self {
            max_uploads: self.max_uploads.min(MAX_UPLOAD_SLOTS),
            upload_rate: self.upload_rate.min(MAX_EXACT_JS),
            cache_max: self.cache_max.min(MAX_EXACT_JS),
        }
    }
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            max_uploads: 8,
            upload_rate: 0,
            cache_max: 2 << 30,
        }
    }
}

/// Everything the user set; persisted by the shell in `storage.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Global on/off toggle.
    pub enabled: bool,
    /// Switch on newly advertised sites without asking.
    #[serde(default)]
    pub auto_enable: bool,
    /// Sites by origin.
    #[serde(default)]
    pub sites: BTreeMap<String, SiteEntry>,
    /// Workload and cache limits.
    #[serde(default)]
    pub limits: UserLimits,
    /// URLs inside an enabled scope whose response the host found not shareable
    /// (`Set-Cookie`, `private`, …): the browser fetches them from the site itself,
    /// so their cookies reach the site's origin. Oldest first, at most
    /// [`MAX_DIRECT_URLS`].
    #[serde(default)]
    pub direct_urls: Vec<String>,
    /// What an administrator set (`storage.managed`); read at every start, never
    /// persisted, and it wins over the user's own switches.
    #[serde(skip)]
    pub managed: ManagedPolicy,
    /// Sites whose requests in scope would carry cookies right now, as the shell
    /// last found in the browser's cookie store. They are not intercepted at all: a
    /// request with cookies never goes through peers (B2). Never persisted.
    #[serde(skip)]
    pub cookie_bound: std::collections::BTreeSet<String>,
    /// The sites the browser lets the extension reach (its host permissions, as
    /// last read from the browser). A site outside them is never intercepted: the
    /// popup asks the user to allow it. Never persisted.
    #[serde(skip)]
    pub access: HostAccess,
}

/// The host permissions the browser granted, as match patterns (issue 15: the
/// extension asks for each site the user switches on, never for every site).
/// Only the forms the extension requests are understood: `<scheme>://<host>/*`
/// for one site, and `<scheme>://*/*` or `<all_urls>` for every site of a scheme
/// (a development build, or a user who granted all sites); any other pattern
/// grants nothing here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAccess {
    every_https: bool,
    every_http: bool,
    origins: std::collections::BTreeSet<String>,
}

/// Most single-site grants kept (patterns beyond it are ignored).
pub const MAX_GRANTED_ORIGINS: usize = 4 * MAX_SITES;

impl HostAccess {
    /// Access to every http and https site.
    pub fn everywhere() -> Self {
        Self {
            every_https: true,
            every_http: true,
            origins: Default::default(),
        }
    }

    /// From the browser's `permissions.getAll().origins`.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Self {
        let mut access = Self::default();
        for pattern in patterns {
            match pattern.as_ref() {
                "<all_urls>" | "*://*/*" => {
                    access.every_https = true;
                    access.every_http = true;
                }
                "https://*/*" => access.every_https = true,
                "http://*/*" => access.every_http = true,
                one => {
                    if let Some(origin) = site_pattern_origin(one)
                        && access.origins.len() < MAX_GRANTED_ORIGINS
                    {
                        access.origins.insert(origin);
                    }
                }
            }
        }
        access
    }

    /// May the extension reach `origin` (`scheme://host[:port]`)? Match
    /// patterns carry no port, so a grant covers the host on every port.
    pub fn allows(&self, origin: &str) -> bool {
        (self.every_https && origin.starts_with("https://"))
            || (self.every_http && origin.starts_with("http://"))
            || site_of(origin).is_some_and(|site| self.origins.contains(&site))
    }

    /// The pattern to ask the browser for, for `origin`'s whole site.
    pub fn pattern_for(origin: &str) -> Option<String> {
        Some(format!("{}/*", site_of(origin)?))
    }
}

/// `scheme://host` of an origin or URL: what a match pattern names.
fn site_of(url: &str) -> Option<String> {
    let origin = origin_of(url)?;
    let (scheme, authority) = origin.split_once("://")?;
    let host_end = match authority.rfind(']') {
        Some(bracket) => bracket + 1,
        None => authority.find(':').unwrap_or(authority.len()),
    };
    Some(format!("{scheme}://{}", &authority[..host_end]))
}

/// `https://example.org/*` → `https://example.org`; `None` for wildcards in the
/// host and for paths narrower than the whole site.
fn site_pattern_origin(pattern: &str) -> Option<String> {
    let base = pattern.strip_suffix("/*")?;
    let authority = &base[base.find("://")? + 3..];
    if base.contains('*') || authority.contains('/') {
        return None;
    }
    site_of(base)
}

/// Admin-managed settings, from the browser's managed storage (Chromium: the
/// `3rdparty.extensions.<id>` policy; Firefox: `policies.json` or a managed
/// storage manifest). Every field is optional; what is absent stays the user's.
/// The schema is `extension/managed_schema.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedPolicy {
    /// Forces the global toggle.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Forces "switch on advertised sites automatically".
    #[serde(default)]
    pub auto_enable: Option<bool>,
    /// Origins switched on as soon as they advertise; the user cannot switch them off.
    #[serde(default)]
    pub sites: Vec<String>,
    /// Forces the sharing limits.
    #[serde(default)]
    pub limits: Option<UserLimits>,
}

impl ManagedPolicy {
    /// Is `origin` switched on by policy?
    pub fn manages(&self, origin: &str) -> bool {
        self.sites
            .iter()
            .any(|s| origin_of(s).is_some_and(|o| o == origin))
    }
}

/// Most URLs kept in [`Settings::direct_urls`].
pub const MAX_DIRECT_URLS: usize = 256;

/// Rule ids from here on are the per-URL `allow` rules of [`Settings::direct_urls`].
pub const DIRECT_RULE_BASE: u32 = 1000;

impl Default for Settings {
    fn default() -> Self {
        Self {
            enabled: true,
            auto_enable: false,
            sites: BTreeMap::new(),
            limits: UserLimits::default(),
            direct_urls: Vec::new(),
            managed: ManagedPolicy::default(),
            cookie_bound: std::collections::BTreeSet::new(),
            access: HostAccess::default(),
        }
    }
}

/// Where the host's gateway listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Per-install token.
    pub token: String,
}

/// Upper bound on remembered sites, so a hostile browsing session cannot grow the
/// settings without limit.
pub const MAX_SITES: usize = 256;

/// Navigations and downloads: redirected to the gateway without any permission
/// (browsers do not apply Local Network Access to top-level navigations).
pub const NAVIGATION_TYPES: [&str; 3] = ["main_frame", "sub_frame", "other"];

/// Subresources: redirected only for sites holding the loopback permission, so a
/// missing or refused permission never breaks a page.
pub const SUBRESOURCE_TYPES: [&str; 6] = [
    "image",
    "script",
    "stylesheet",
    "media",
    "font",
    "xmlhttprequest",
];

/// Every type that may reach the gateway (for the token rule).
pub const INTERCEPTED_TYPES: [&str; 9] = [
    "main_frame",
    "sub_frame",
    "other",
    "image",
    "script",
    "stylesheet",
    "media",
    "font",
    "xmlhttprequest",
];

/// The origin (`scheme://host[:port]`) of an http(s) URL, lower-cased, with
/// the scheme's default port left out (as browsers serialize origins). The one
/// definition the extension, the gateway and the host use.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') || authority.starts_with(':') {
        return None;
    }
    // A host, then the port, if any, as digits after its one `:` (found by
    // fuzzing: `https://a:443:443` lost one `:443` each time round, and
    // `https://:443` became `https://`, which has no origin).
    let after_host = authority
        .rsplit_once(']')
        .map_or(authority, |(_, rest)| rest);
    if let Some((_, port)) = after_host.split_once(':')
        && !port.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    Some(format!("{scheme}://{authority}"))
}

/// Whether `path` lies in a site's advertised `scope` (a path prefix). The one
/// scope rule the extension, the gateway and the server apply.
pub fn in_scope(path: &str, scope: &str) -> bool {
    path.starts_with(scope)
}

#[cfg(test)]
mod origin_tests {
    use super::*;

    #[test]
    fn origins_are_lower_case_without_default_ports() {
        assert_eq!(
            origin_of("HTTPS://Example.ORG:443/a?b").as_deref(),
            Some("https://example.org")
        );
        assert_eq!(
            origin_of("http://example.org:80").as_deref(),
            Some("http://example.org")
        );
        assert_eq!(
            origin_of("https://example.org:8443/x").as_deref(),
            Some("https://example.org:8443")
        );
        assert_eq!(origin_of("https://u@example.org/"), None);
        assert_eq!(
            origin_of("http://[::1]:8080/").as_deref(),
            Some("http://[::1]:8080")
        );
        // A second port is no URL (it used to lose one `:443` per call).
        assert_eq!(origin_of("https://example.org:443:443/x"), None);
        assert_eq!(origin_of("http://[::1]:80:80/"), None);
        assert_eq!(origin_of("https://example.org:x/"), None);
        assert_eq!(origin_of("https://:443/x"), None);
        assert_eq!(origin_of("http://:80"), None);
        assert_eq!(origin_of("ftp://example.org/"), None);
        assert!(in_scope("/static/a.js", "/static/"));
        assert!(!in_scope("/other", "/static/"));
    }
}

/// Escapes a literal for an RE2 regular expression.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Settings {
    /// Records a site's advertisement seen on a response to `url`. Returns true if
    /// the settings changed (a new site, or a new scope).
    pub fn advertised(&mut self, url: &str, header_value: &str) -> bool {
        let Some(origin) = origin_of(url) else {
            return false;
        };
        let Ok(ad) = Advertisement::parse(header_value) else {
            return false;
        };
        let full = self.sites.len() >= MAX_SITES;
        match self.sites.get_mut(&origin) {
            Some(entry) if entry.scope == ad.scope => false,
            Some(entry) => {
                entry.scope = ad.scope;
                true
            }
            None if full => false,
            None => {
                let enabled = self.auto_enable_now();
                self.sites.insert(
                    origin,
                    SiteEntry {
                        scope: ad.scope,
                        enabled,
                    },
                );
                true
            }
        }
    }

    /// Applies an administrator's policy: forced switches take effect at once.
    /// The user's own choices stay as they were, so removing the policy gives them back.
    pub fn set_managed(&mut self, policy: ManagedPolicy) {
        self.managed = policy;
    }

    /// Records whether requests to `origin`'s scope would carry cookies. True if
    /// that changed (the rules must be reapplied). Only known sites are tracked.
    pub fn set_cookie_bound(&mut self, origin: &str, bound: bool) -> bool {
        if !self.sites.contains_key(origin) {
            return false;
        }
        if bound {
            self.cookie_bound.insert(origin.to_string())
        } else {
            self.cookie_bound.remove(origin)
        }
    }

    /// Is this known site switched on (by the user or by policy)?
    pub fn site_on(&self, origin: &str) -> bool {
        self.managed.manages(origin) || self.sites.get(origin).is_some_and(|s| s.enabled)
    }

    /// The global toggle in force (the policy's, else the user's).
    pub fn enabled_now(&self) -> bool {
        self.managed.enabled.unwrap_or(self.enabled)
    }

    /// "Switch on advertised sites automatically" in force.
    pub fn auto_enable_now(&self) -> bool {
        self.managed.auto_enable.unwrap_or(self.auto_enable)
    }

    /// The limits in force.
    pub fn limits_now(&self) -> UserLimits {
        self.managed.limits.unwrap_or(self.limits).clamped()
    }

    /// Flips one site's switch; false if the site is unknown or the policy holds
    /// it on.
    pub fn set_site_enabled(&mut self, origin: &str, enabled: bool) -> bool {
        if !enabled && self.managed.manages(origin) {
            return false;
        }
        match self.sites.get_mut(origin) {
            Some(entry) => {
                entry.enabled = enabled;
                true
            }
            None => false,
        }
    }

    /// Remembers that `url` must be fetched from the site itself. True if new.
    /// Only http(s) URLs of known sites are kept; the oldest goes when full.
    pub fn fetch_directly(&mut self, url: &str) -> bool {
        let url = url.split('#').next().unwrap_or(url);
        let known = origin_of(url).is_some_and(|o| self.sites.contains_key(&o));
        if !known || url.len() > 2048 || self.direct_urls.iter().any(|u| u == url) {
            return false;
        }
        if self.direct_urls.len() >= MAX_DIRECT_URLS {
            self.direct_urls.remove(0);
        }
        self.direct_urls.push(url.to_string());
        true
    }

    /// Is `url` one of the URLs sent to the site itself?
    pub fn is_direct(&self, url: &str) -> bool {
        let url = url.split('#').next().unwrap_or(url);
        self.direct_urls.iter().any(|u| u == url)
    }

    /// Sites the gateway may fetch for right now.
    pub fn enabled_sites(&self) -> Vec<EnabledSite> {
        if !self.enabled_now() {
            return Vec::new();
        }
        self.sites
            .iter()
            .filter(|(origin, s)| s.enabled || self.managed.manages(origin))
            .filter(|(origin, _)| self.access.allows(origin))
            .map(|(origin, s)| EnabledSite {
                origin: origin.clone(),
                scope: s.scope.clone(),
            })
            .collect()
    }

    /// The gateway URL for `url` if it lies in the scope of an enabled site (the
    /// same test the redirect rules make; used where the shell intercepts with
    /// `webRequest` instead, as Firefox does for subresources).
    pub fn gateway_url(&self, gateway: Option<&Gateway>, url: &str) -> Option<String> {
        let gw = gateway?;
        let origin = origin_of(url)?;
        let rest = &url[url.find("://")? + 3..];
        let path = &rest[rest.find('/').unwrap_or(rest.len())..];
        let path = if path.is_empty() { "/" } else { path };
        let url = url.split('#').next()?;
        if self.direct_urls.iter().any(|u| u == url) || self.cookie_bound.contains(&origin) {
            return None;
        }
        self.enabled_sites()
            .iter()
            .any(|s| s.origin == origin && in_scope(path, &s.scope))
            .then(|| format!("http://127.0.0.1:{}/g/{url}", gw.port))
    }

    /// The declarativeNetRequest rules for the current state (Chromium shape).
    /// Subresources are redirected only for origins in `loopback_granted`; sites in
    /// [`Settings::cookie_bound`] get no rule at all.
    pub fn rules(
        &self,
        gateway: Option<&Gateway>,
        loopback_granted: &std::collections::BTreeSet<String>,
    ) -> Vec<serde_json::Value> {
        let Some(gw) = gateway else {
            return Vec::new();
        };
        let sites: Vec<EnabledSite> = self
            .enabled_sites()
            .into_iter()
            .filter(|s| !self.cookie_bound.contains(&s.origin))
            .collect();
        if sites.is_empty() {
            return Vec::new();
        }
        let base = format!("http://127.0.0.1:{}", gw.port);
        let mut rules = vec![serde_json::json!({
            "id": 1,
            "priority": 2,
            "action": {
                "type": "modifyHeaders",
                "requestHeaders": [{ "header": GATEWAY_TOKEN, "operation": "set", "value": gw.token }]
            },
            "condition": {
                "urlFilter": format!("|{base}/"),
                "resourceTypes": INTERCEPTED_TYPES,
            }
        })];
        for (id, site) in (2..).zip(sites.iter()) {
            let prefix = format!("{}{}", site.origin, site.scope);
            let mut types: Vec<&str> = NAVIGATION_TYPES.to_vec();
            if loopback_granted.contains(&site.origin) {
                types.extend(SUBRESOURCE_TYPES);
            }
            rules.push(serde_json::json!({
                "id": id,
                "priority": 1,
                "action": {
                    "type": "redirect",
                    "redirect": { "regexSubstitution": format!("{base}/g/\\1") }
                },
                "condition": {
                    "regexFilter": format!("^({}[^#]*)$", regex_escape(&prefix)),
                    "resourceTypes": types,
                    "requestMethods": ["get"],
                }
            }));
        }
        for (id, url) in (DIRECT_RULE_BASE..).zip(self.direct_urls.iter()) {
            rules.push(serde_json::json!({
                "id": id,
                "priority": 3,
                "action": { "type": "allow" },
                "condition": {
                    "regexFilter": format!("^{}(#.*)?$", regex_escape(url)),
                    "resourceTypes": INTERCEPTED_TYPES,
                }
            }));
        }
        rules
    }
}

/// Why a subresource request may not go through peers, or `None` if it may.
///
/// The shareability rule is [`crate::shareable::request_shareable`] (the one the
/// server and the host apply: only `GET`, never with `Cookie` or `Authorization`).
/// On top of it a `Range` request keeps going to the site: the page expects
/// exactly the part it asked for. Used by the Firefox shell before it asks the
/// gateway for a body.
pub fn subresource_refusal(method: &str, headers: &[(String, String)]) -> Option<String> {
    if let Err(e) = crate::shareable::request_shareable(method, headers) {
        return Some(e.to_string());
    }
    if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("range")) {
        return Some("a Range request: the site answers the part itself".into());
    }
    None
}

/// A cookie as the browser's cookie store reports it (`cookies.getAll`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCookie {
    /// Its domain (a leading dot, or `hostOnly: false`, makes it a domain cookie).
    #[serde(default)]
    pub domain: String,
    /// Its path.
    #[serde(default)]
    pub path: String,
    /// Sent only to exactly `domain`.
    #[serde(default, rename = "hostOnly")]
    pub host_only: bool,
}

/// The host name of an http(s) origin (no scheme, no port).
pub fn host_of(origin: &str) -> Option<String> {
    let origin = origin_of(origin)?;
    let authority = &origin[origin.find("://")? + 3..];
    let host = match authority.strip_prefix('[') {
        // An IPv6 literal keeps its brackets.
        Some(rest) => format!("[{}]", rest.split(']').next()?),
        None => authority.split(':').next()?.to_string(),
    };
    Some(host)
}

/// Would requests to `origin`'s `scope` carry cookies? `at_root` is how many
/// cookies the store says are sent to the scope root; `for_host` are the store's
/// cookies for the origin's host (and its subdomains): any whose path lies inside
/// the scope and that is sent to this host counts too. When unsure it says yes,
/// so a site is never intercepted blind.
pub fn cookies_reach_scope(
    origin: &str,
    scope: &str,
    at_root: usize,
    for_host: &[StoredCookie],
) -> bool {
    if at_root > 0 {
        return true;
    }
    let Some(host) = host_of(origin) else {
        return true;
    };
    for_host.iter().any(|c| {
        c.path.starts_with(scope) && (!c.host_only || c.domain.eq_ignore_ascii_case(&host))
    })
}

/// Is a site on `host` affected by a change to a cookie of `cookie_domain`
/// (the host itself, or a parent domain)?
pub fn cookie_domain_touches(host: &str, cookie_domain: &str) -> bool {
    let domain = cookie_domain.trim_start_matches('.');
    if domain.is_empty() {
        return false;
    }
    let host = host.to_ascii_lowercase();
    let domain = domain.to_ascii_lowercase();
    host == domain || host.ends_with(&format!(".{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AD: &str = r#"scope="/static/""#;

    /// Settings in a browser that granted every site (the development build).
    fn reachable() -> Settings {
        Settings {
            access: HostAccess::everywhere(),
            ..Settings::default()
        }
    }

    #[test]
    fn a_site_switched_on_is_intercepted_only_where_the_browser_grants_access() {
        let gw = Gateway {
            port: 4000,
            token: "t".into(),
        };
        let mut s = Settings::default();
        let site = "https://198.51.100.2";
        assert!(s.advertised("https://198.51.100.2/index.html", AD));
        assert!(s.set_site_enabled(site, true));
        assert!(s.enabled_sites().is_empty(), "no access granted yet");
        assert!(s.rules(Some(&gw), &Default::default()).is_empty());
        assert_eq!(
            s.gateway_url(Some(&gw), "https://198.51.100.2/static/a"),
            None
        );
        // The popup asks for exactly this site's pattern; the grant lets it in.
        let pattern = HostAccess::pattern_for(site).unwrap();
        assert_eq!(pattern, "https://198.51.100.2/*");
        s.access = HostAccess::from_patterns(&[pattern]);
        assert_eq!(s.enabled_sites().len(), 1);
        assert_eq!(s.rules(Some(&gw), &Default::default()).len(), 2);
        // Another site's grant, or another scheme's, is not this one's.
        s.access = HostAccess::from_patterns(&["https://203.0.113.9/*", "http://198.51.100.2/*"]);
        assert!(s.enabled_sites().is_empty());
        s.access = HostAccess::from_patterns(&["https://*/*"]);
        assert_eq!(s.enabled_sites().len(), 1);
    }

    #[test]
    fn only_whole_site_and_every_site_patterns_grant_access() {
        let a = HostAccess::from_patterns(&[
            "https://example.org/*",
            "https://*.example.net/*",
            "https://example.com/static/*",
            "ftp://example.org/*",
            "not a pattern",
            "http://[2001:db8::1]/*",
        ]);
        assert!(a.allows("https://example.org"));
        // Match patterns carry no port: the grant covers the host on any port.
        assert!(a.allows("https://example.org:8443"));
        assert!(!a.allows("http://example.org"), "another scheme");
        assert!(
            !a.allows("https://a.example.net"),
            "host wildcards grant nothing here"
        );
        assert!(
            !a.allows("https://example.com"),
            "a path narrower than the site"
        );
        assert!(a.allows("http://[2001:db8::1]:8080"));
        assert!(!HostAccess::default().allows("https://example.org"));
        let all = HostAccess::from_patterns(&["<all_urls>"]);
        assert!(all.allows("https://x.example") && all.allows("http://x.example"));
        let https = HostAccess::from_patterns(&["https://*/*"]);
        assert!(https.allows("https://x.example") && !https.allows("http://x.example"));
        assert_eq!(
            HostAccess::pattern_for("https://Example.org:8443/page").as_deref(),
            Some("https://example.org/*")
        );
        assert_eq!(HostAccess::pattern_for("ftp://example.org"), None);
        // A flood of grants is bounded.
        let many: Vec<String> = (0..MAX_GRANTED_ORIGINS + 10)
            .map(|i| format!("https://s{i}.example/*"))
            .collect();
        let bounded = HostAccess::from_patterns(&many);
        assert!(bounded.allows("https://s0.example"));
        assert!(!bounded.allows(&format!("https://s{}.example", MAX_GRANTED_ORIGINS + 5)));
    }

    #[test]
    fn a_site_is_intercepted_only_once_switched_on() {
        let gw = Gateway {
            port: 4000,
            token: "t".into(),
        };
        let mut s = reachable();
        let none = std::collections::BTreeSet::new();
        let granted: std::collections::BTreeSet<String> =
            ["https://198.51.100.2".to_string()].into();
        assert!(s.advertised("https://198.51.100.2/index.html", AD));
        assert!(!s.advertised("https://198.51.100.2/other", AD));
        assert!(s.rules(Some(&gw), &granted).is_empty());
        assert!(s.set_site_enabled("https://198.51.100.2", true));
        // Without the loopback permission: navigations and downloads only.
        let types = &s.rules(Some(&gw), &none)[1]["condition"]["resourceTypes"];
        assert_eq!(types.as_array().unwrap().len(), NAVIGATION_TYPES.len());
        assert!(!types.to_string().contains("image"));
        let rules = s.rules(Some(&gw), &granted);
        assert!(
            rules[1]["condition"]["resourceTypes"]
                .to_string()
                .contains("image")
        );
        assert_eq!(rules.len(), 2);
        let redirect = &rules[1];
        assert_eq!(
            redirect["condition"]["regexFilter"],
            r"^(https://198\.51\.100\.2/static/[^#]*)$"
        );
        assert_eq!(
            redirect["action"]["redirect"]["regexSubstitution"],
            r"http://127.0.0.1:4000/g/\1"
        );
        // The token travels in a header, never in a URL.
        assert!(!redirect.to_string().contains("\"t\""));
        s.enabled = false;
        assert!(s.rules(Some(&gw), &granted).is_empty());
        s.enabled = true;
        assert!(s.rules(None, &granted).is_empty());
    }

    #[test]
    fn gateway_urls_only_inside_enabled_scopes() {
        let gw = Gateway {
            port: 4000,
            token: "t".into(),
        };
        let mut s = reachable();
        s.advertised("https://a.example/", AD);
        assert_eq!(
            s.gateway_url(Some(&gw), "https://a.example/static/x.js"),
            None,
            "not switched on"
        );
        s.set_site_enabled("https://a.example", true);
        assert_eq!(
            s.gateway_url(Some(&gw), "https://a.example/static/x.js#frag")
                .as_deref(),
            Some("http://127.0.0.1:4000/g/https://a.example/static/x.js")
        );
        assert_eq!(
            s.gateway_url(Some(&gw), "https://a.example/private/x.js"),
            None
        );
        assert_eq!(
            s.gateway_url(Some(&gw), "https://b.example/static/x.js"),
            None
        );
        assert_eq!(s.gateway_url(None, "https://a.example/static/x.js"), None);
        s.enabled = false;
        assert_eq!(
            s.gateway_url(Some(&gw), "https://a.example/static/x.js"),
            None
        );
    }

    #[test]
    fn bad_advertisements_and_urls_are_ignored() {
        let mut s = reachable();
        assert!(!s.advertised("ftp://x/", AD));
        assert!(!s.advertised("https://user@x/", AD));
        assert!(!s.advertised("https://x/", "scope=\"../\""));
        assert!(s.sites.is_empty());
        s.auto_enable = true;
        assert!(s.advertised("HTTPS://Example.org:8443/a", AD));
        assert!(s.sites["https://example.org:8443"].enabled);
    }

    #[test]
    fn a_url_found_not_shareable_goes_to_the_site_itself() {
        let gw = Gateway {
            port: 4000,
            token: "t".into(),
        };
        let mut s = reachable();
        assert!(s.advertised("https://a.example/", AD));
        assert!(s.set_site_enabled("https://a.example", true));
        let none = std::collections::BTreeSet::new();
        assert_eq!(s.rules(Some(&gw), &none).len(), 2);
        assert!(s.fetch_directly("https://a.example/static/session.js"));
        assert!(
            !s.fetch_directly("https://a.example/static/session.js#x"),
            "already known"
        );
        assert!(
            !s.fetch_directly("https://unknown.example/static/x.js"),
            "only enrolled sites are remembered"
        );
        assert_eq!(
            s.gateway_url(Some(&gw), "https://a.example/static/session.js"),
            None
        );
        assert!(s.is_direct("https://a.example/static/session.js"));
        assert!(!s.is_direct("https://a.example/static/other.js"));
        let rules = s.rules(Some(&gw), &none);
        assert_eq!(rules.len(), 3);
        let allow = &rules[2];
        assert_eq!(allow["id"], DIRECT_RULE_BASE);
        assert_eq!(allow["action"]["type"], "allow");
        assert!(allow["priority"].as_u64() > rules[1]["priority"].as_u64());
        assert_eq!(
            allow["condition"]["regexFilter"],
            r"^https://a\.example/static/session\.js(#.*)?$"
        );
        for i in 0..MAX_DIRECT_URLS {
            s.fetch_directly(&format!("https://a.example/static/{i}"));
        }
        assert_eq!(s.direct_urls.len(), MAX_DIRECT_URLS);
        assert_eq!(
            s.direct_urls[0], "https://a.example/static/0",
            "oldest went first"
        );
        // Survives a save and restore.
        let saved = serde_json::to_string(&s).unwrap();
        let back: Settings = serde_json::from_str(&saved).unwrap();
        assert_eq!(back.direct_urls, s.direct_urls);
    }

    #[test]
    fn an_administrator_policy_wins_over_the_user_switches() {
        let mut s = reachable();
        assert!(s.advertised("https://fleet.example/", AD));
        assert!(!s.sites["https://fleet.example"].enabled);
        s.set_managed(ManagedPolicy {
            sites: vec![
                "https://Fleet.example/".into(),
                "https://later.example".into(),
            ],
            limits: Some(UserLimits {
                max_uploads: 2,
                upload_rate: 1 << 20,
                cache_max: u64::MAX,
            }),
            ..ManagedPolicy::default()
        });
        assert!(s.site_on("https://fleet.example"), "switched on at once");
        assert!(
            !s.set_site_enabled("https://fleet.example", false),
            "the user cannot switch it off"
        );
        assert!(s.site_on("https://fleet.example"));
        assert!(s.advertised("https://later.example/", AD));
        assert!(
            s.site_on("https://later.example"),
            "on as soon as it advertises"
        );
        assert!(s.advertised("https://other.example/", AD));
        assert!(!s.site_on("https://other.example"), "others stay opt-in");
        assert_eq!(s.limits_now().max_uploads, 2);
        assert_eq!(s.limits_now().cache_max, MAX_EXACT_JS, "clamped");
        s.enabled = false;
        assert!(s.enabled_sites().is_empty(), "the user's toggle, no policy");
        s.managed.enabled = Some(true);
        assert_eq!(s.enabled_sites().len(), 2, "the policy's toggle wins");
        // The policy is never persisted: a restart reads it afresh, and the user's
        // own choices come back when it goes.
        let back: Settings = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.managed, ManagedPolicy::default());
        assert!(!back.site_on("https://fleet.example"));
        assert_eq!(back.limits_now(), UserLimits::default());
    }

    #[test]
    fn a_site_whose_requests_carry_cookies_is_not_intercepted() {
        let gw = Gateway {
            port: 4000,
            token: "t".into(),
        };
        let mut s = reachable();
        assert!(s.advertised("https://a.example/", AD));
        assert!(s.advertised("https://b.example/", AD));
        assert!(s.set_site_enabled("https://a.example", true));
        assert!(s.set_site_enabled("https://b.example", true));
        let none = std::collections::BTreeSet::new();
        assert_eq!(s.rules(Some(&gw), &none).len(), 3);
        assert!(s.set_cookie_bound("https://a.example", true));
        assert!(!s.set_cookie_bound("https://a.example", true), "no change");
        assert!(!s.set_cookie_bound("https://unknown.example", true));
        let rules = s.rules(Some(&gw), &none);
        assert_eq!(rules.len(), 2, "token rule and b's redirect only");
        assert!(
            !serde_json::to_string(&rules)
                .unwrap()
                .contains("a\\\\.example")
        );
        assert_eq!(s.gateway_url(Some(&gw), "https://a.example/static/x"), None);
        assert!(
            s.gateway_url(Some(&gw), "https://b.example/static/x")
                .is_some()
        );
        assert!(s.set_cookie_bound("https://a.example", false));
        assert_eq!(s.rules(Some(&gw), &none).len(), 3);
        assert!(s.set_cookie_bound("https://b.example", true));
        assert!(s.set_cookie_bound("https://a.example", true));
        assert!(
            s.rules(Some(&gw), &none).is_empty(),
            "nothing left to intercept"
        );
    }

    #[test]
    fn the_subresource_test_is_the_shared_rule_plus_range() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(subresource_refusal("GET", &h(&[("Accept", "*/*")])), None);
        for (method, headers) in [
            ("GET", h(&[("COOKIE", "a=b")])),
            ("GET", h(&[("Authorization", "Bearer x")])),
            ("POST", h(&[])),
            ("GET", h(&[("range", "bytes=0-")])),
        ] {
            assert!(
                subresource_refusal(method, &headers).is_some(),
                "{method} {headers:?}"
            );
        }
        // The same words as the shared rule, so logs agree with the host's.
        assert_eq!(
            subresource_refusal("GET", &h(&[("cookie", "a=b")])),
            Some(crate::shareable::NotShareable::Credentials.to_string())
        );
    }

    #[test]
    fn cookies_in_the_store_bind_a_scope_only_when_they_would_be_sent() {
        let c = |domain: &str, path: &str, host_only: bool| StoredCookie {
            domain: domain.into(),
            path: path.into(),
            host_only,
        };
        let o = "https://s.example:8443";
        assert_eq!(host_of(o).as_deref(), Some("s.example"));
        assert_eq!(host_of("http://[::1]:80").as_deref(), Some("[::1]"));
        assert!(
            cookies_reach_scope(o, "/static/", 1, &[]),
            "sent to the root"
        );
        assert!(!cookies_reach_scope(o, "/static/", 0, &[]));
        assert!(cookies_reach_scope(
            o,
            "/static/",
            0,
            &[c("s.example", "/static/img/", true)]
        ));
        assert!(
            !cookies_reach_scope(o, "/static/", 0, &[c("s.example", "/app/", true)]),
            "outside the scope"
        );
        assert!(
            !cookies_reach_scope(o, "/static/", 0, &[c("sub.s.example", "/static/", true)]),
            "a subdomain's host-only cookie is not sent here"
        );
        assert!(cookies_reach_scope(
            o,
            "/static/",
            0,
            &[c(".s.example", "/static/", false)]
        ));
        assert!(
            cookies_reach_scope("not an origin", "/", 0, &[]),
            "unsure: assume cookies"
        );
        assert!(cookie_domain_touches("a.s.example", ".s.example"));
        assert!(cookie_domain_touches("S.example", "s.example"));
        assert!(!cookie_domain_touches("evils.example", "s.example"));
        assert!(!cookie_domain_touches("s.example", ""));
    }
}
