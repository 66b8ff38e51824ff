//! `peercache-wasm`: the extension's brain, compiled to WebAssembly.
//!
//! The JavaScript shell (`extension/background.js`) owns the browser APIs; this
//! crate owns every decision: which sites are enrolled and enabled, what the
//! interception rules are, what to tell the native host, what the popup shows.
//! The logic itself is `peercache_core::extension`, shared with native tests; here
//! it is wrapped in a [`Brain`] that converts to and from JavaScript values.
//!
//! Goals: the shell stays thin enough to read in one sitting; the brain can be
//! tested under Node with `wasm-bindgen-test`. Non-goals: calling `chrome.*` from
//! Rust (the shell does it, so one shell serves both browsers).

pub mod why;

use std::collections::{BTreeMap, BTreeSet};

use peercache_core::extension::{
    Gateway, HostAccess, MAX_EXACT_JS, ManagedPolicy, Settings, StoredCookie, UserLimits,
};
use peercache_core::protocol::{Counters, FromHost, HostLimits, RecentPeer, ToHost};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::why::WhyView;

/// The state of the connection to the native host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Not yet connected.
    Connecting,
    /// Connected and answering.
    Connected,
    /// The host is missing or exited; `error` says what the browser reported.
    Disconnected,
}

/// What the popup renders.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// Global toggle.
    pub enabled: bool,
    /// Enable newly advertised sites automatically.
    pub auto_enable: bool,
    /// Host connection state.
    pub host: HostState,
    /// Last host error, if any.
    pub host_error: Option<String>,
    /// Host version from `hello`.
    pub host_version: Option<String>,
    /// This host's peer id.
    pub peer_id: Option<String>,
    /// Sites: origin, scope, switch.
    pub sites: Vec<SiteView>,
    /// Counters from the host.
    pub counters: Counters,
    /// Bytes the sites did not have to send (from peers and from the own cache).
    pub bytes_saved: u64,
    /// The host's limits and cache use.
    pub limits: HostLimits,
    /// Number of interception rules in force.
    pub rules: usize,
    /// The limits the user set.
    pub user_limits: UserLimits,
    /// Command that installs the host.
    pub install_command: &'static str,
    /// Peers that recently sent verified bytes (the popup shows the active tab's site's).
    pub peers: Vec<RecentPeer>,
    /// Recent downloads with why they went as they did (the popup shows the
    /// active tab's site's).
    pub recent: Vec<peercache_core::explain::Explanation>,
    /// Each recent download's explanation as text, in the same order.
    pub recent_text: Vec<String>,
    /// Each recent download in the popup's short words, in the same order.
    pub why: Vec<WhyView>,
    /// What the administrator fixed, so the popup can lock those controls.
    pub managed: ManagedView,
    /// The host's doctor verdicts (browsers registered, reachable by peers),
    /// as `peercache-host doctor` prints them.
    pub doctor: Vec<peercache_core::doctor::Verdict>,
}

/// Which controls an administrator's policy holds.
#[derive(Debug, Clone, Serialize)]
pub struct ManagedView {
    /// The global toggle.
    pub enabled: bool,
    /// The auto-enable setting.
    pub auto_enable: bool,
    /// The sharing limits.
    pub limits: bool,
}

/// One row of the popup's site list.
#[derive(Debug, Clone, Serialize)]
pub struct SiteView {
    /// Origin.
    pub origin: String,
    /// Advertised scope.
    pub scope: String,
    /// The user's switch.
    pub enabled: bool,
    /// The site's loopback-permission state as last seen, if any.
    pub loopback: Option<String>,
    /// Switched on by the administrator's policy.
    pub managed: bool,
    /// The browser holds cookies for its scope, so it is not intercepted.
    pub cookies: bool,
    /// The browser lets the extension reach the site (its host permission).
    pub access: bool,
    /// What to ask the browser for when it does not.
    pub access_pattern: Option<String>,
    /// Its offer was seen (a site the administrator listed may not have been
    /// reached yet: the user must allow it first).
    pub advertised: bool,
}

/// A request or response header as `webRequest` reports it.
#[derive(Debug, Deserialize)]
struct JsHeader {
    name: String,
    #[serde(default)]
    value: Option<String>,
}

/// `[{name, value}]` as name/value pairs; `None` if it is not such a list.
fn headers_from_js(headers: JsValue) -> Option<Vec<(String, String)>> {
    if headers.is_undefined() || headers.is_null() {
        return Some(Vec::new());
    }
    let list: Vec<JsHeader> = serde_wasm_bindgen::from_value(headers).ok()?;
    Some(
        list.into_iter()
            .map(|h| (h.name, h.value.unwrap_or_default()))
            .collect(),
    )
}

/// The request types whose bodies the extension may replace or redirect as
/// subresources (`peercache_core::extension::SUBRESOURCE_TYPES`). The
/// background script registers its listeners before the wasm loads, so it keeps
/// a copy; a node test holds the copy to this list.
#[wasm_bindgen]
pub fn subresource_types() -> Vec<String> {
    peercache_core::extension::SUBRESOURCE_TYPES
        .iter()
        .map(|t| (*t).to_string())
        .collect()
}

/// The extension's brain.
#[wasm_bindgen]
pub struct Brain {
    settings: Settings,
    gateway: Option<Gateway>,
    host: HostState,
    host_error: Option<String>,
    host_version: Option<String>,
    peer_id: Option<String>,
    counters: Counters,
    limits: HostLimits,
    loopback: BTreeMap<String, String>,
    peers: Vec<RecentPeer>,
    recent: Vec<peercache_core::explain::Explanation>,
    doctor: Vec<peercache_core::doctor::Verdict>,
}

fn to_js<T: Serialize>(value: &T) -> JsValue {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or(JsValue::NULL)
}

impl Default for Brain {
    fn default() -> Self {
        Self::from_settings(Settings::default())
    }
}

impl Brain {
    /// A brain with these settings and no host yet.
    pub fn from_settings(settings: Settings) -> Self {
        Self {
            settings,
            gateway: None,
            host: HostState::Connecting,
            host_error: None,
            host_version: None,
            peer_id: None,
            counters: Counters::default(),
            limits: HostLimits::default(),
            loopback: BTreeMap::new(),
            peers: Vec::new(),
            recent: Vec::new(),
            doctor: Vec::new(),
        }
    }

    fn granted(&self) -> BTreeSet<String> {
        self.loopback
            .iter()
            .filter(|(_, s)| s.as_str() == "granted")
            .map(|(o, _)| o.clone())
            .collect()
    }

    /// Records a site's loopback-permission state (`granted`, `denied`, `prompt`,
    /// `unsupported`). True if the rules change.
    pub fn loopback_state(&mut self, origin: &str, state: &str) -> bool {
        if !self.settings.sites.contains_key(origin)
            || self.loopback.len() >= peercache_core::extension::MAX_SITES
        {
            return false;
        }
        let before = self.granted();
        self.loopback
            .insert(origin.to_string(), state.chars().take(16).collect());
        before != self.granted()
    }

    /// The `limits` message for the host.
    pub fn limits_msg(&self) -> ToHost {
        let l = self.settings.limits_now();
        ToHost::Limits {
            max_uploads: l.max_uploads,
            upload_rate: l.upload_rate,
            cache_max: l.cache_max,
        }
    }

    /// The settings (for native callers and tests).
    pub fn settings_ref(&self) -> &Settings {
        &self.settings
    }

    /// Applies a host message; true if the interception rules may have changed.
    pub fn apply_host_message(&mut self, msg: FromHost) -> bool {
        match msg {
            FromHost::Hello { version, .. } => {
                self.host = HostState::Connected;
                self.host_error = None;
                self.host_version = Some(version);
                false
            }
            FromHost::Status {
                gateway_port,
                token,
                peer_id,
                counters,
                limits,
                peers,
                recent,
                doctor,
                ..
            } => {
                self.recent = recent;
                self.doctor = doctor;
                self.host = HostState::Connected;
                self.counters = counters;
                self.limits = limits;
                self.peers = peers;
                self.peer_id = Some(peer_id);
                let gw = (gateway_port != 0).then_some(Gateway {
                    port: gateway_port,
                    token,
                });
                let changed = gw != self.gateway;
                self.gateway = gw;
                changed
            }
            FromHost::NotShareable { url, .. } => self.settings.fetch_directly(&url),
            FromHost::Event { .. } => false,
            FromHost::Error { message } => {
                self.host_error = Some(message);
                false
            }
        }
    }

    /// The sites seen advertising, then those the administrator listed that
    /// were not seen yet (most often: not allowed in this browser yet).
    fn site_views(&self) -> Vec<SiteView> {
        let seen = self.settings.sites.iter().map(|(origin, s)| SiteView {
            origin: origin.clone(),
            scope: s.scope.clone(),
            enabled: self.settings.site_on(origin),
            loopback: self.loopback.get(origin).cloned(),
            managed: self.settings.managed.manages(origin),
            cookies: self.settings.cookie_bound.contains(origin),
            access: self.settings.access.allows(origin),
            access_pattern: HostAccess::pattern_for(origin),
            advertised: true,
        });
        let listed: BTreeSet<String> = self
            .settings
            .managed
            .sites
            .iter()
            .filter_map(|s| peercache_core::extension::origin_of(s))
            .filter(|origin| !self.settings.sites.contains_key(origin))
            .take(peercache_core::extension::MAX_SITES)
            .collect();
        let unseen = listed.into_iter().map(|origin| SiteView {
            scope: String::new(),
            enabled: true,
            loopback: None,
            managed: true,
            cookies: false,
            access: self.settings.access.allows(&origin),
            access_pattern: HostAccess::pattern_for(&origin),
            advertised: false,
            origin,
        });
        seen.chain(unseen).collect()
    }

    /// The popup's view model.
    pub fn view_model(&self) -> View {
        View {
            enabled: self.settings.enabled_now(),
            auto_enable: self.settings.auto_enable_now(),
            host: self.host.clone(),
            host_error: self.host_error.clone(),
            host_version: self.host_version.clone(),
            peer_id: self.peer_id.clone(),
            sites: self.site_views(),
            counters: self.counters,
            bytes_saved: self.counters.bytes_saved(),
            limits: self.limits,
            rules: self
                .settings
                .rules(self.gateway.as_ref(), &self.granted())
                .len(),
            user_limits: self.settings.limits_now(),
            install_command: "peercache-host install --browser chrome   # or chromium, edge, brave, vivaldi, firefox, librewolf",
            peers: self.peers.clone(),
            recent: self.recent.clone(),
            recent_text: self.recent.iter().map(|e| e.render()).collect(),
            why: self.recent.iter().map(WhyView::of).collect(),
            managed: ManagedView {
                enabled: self.settings.managed.enabled.is_some(),
                auto_enable: self.settings.managed.auto_enable.is_some(),
                limits: self.settings.managed.limits.is_some(),
            },
            doctor: self.doctor.clone(),
        }
    }

    /// The `config` message for the host.
    pub fn config(&self) -> ToHost {
        ToHost::Config {
            enabled: self.settings.enabled_now(),
            sites: self.settings.enabled_sites(),
        }
    }
}

#[wasm_bindgen]
impl Brain {
    /// Restores a brain from saved settings; anything unreadable starts fresh.
    #[wasm_bindgen(constructor)]
    pub fn new(saved: JsValue) -> Brain {
        let settings = if saved.is_undefined() || saved.is_null() {
            Settings::default()
        } else {
            serde_wasm_bindgen::from_value(saved).unwrap_or_else(|e| {
                web_sys::console::warn_1(
                    &format!("peercache: ignoring unreadable settings: {e}").into(),
                );
                Settings::default()
            })
        };
        Brain::from_settings(settings)
    }

    /// The settings to persist.
    pub fn settings(&self) -> JsValue {
        to_js(&self.settings)
    }

    /// The first message to send the host.
    pub fn hello(&self) -> JsValue {
        to_js(&ToHost::Hello {
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    /// The `config` message reflecting the current settings.
    pub fn config_message(&self) -> JsValue {
        to_js(&self.config())
    }

    /// Feeds a message from the host. Returns true if the rules must be reapplied.
    pub fn on_host_message(&mut self, msg: JsValue) -> Result<bool, JsError> {
        let msg: FromHost = serde_wasm_bindgen::from_value(msg)
            .map_err(|e| JsError::new(&format!("unexpected message from host: {e}")))?;
        Ok(self.apply_host_message(msg))
    }

    /// The host went away: no gateway, so no rules (pages load straight from sites).
    pub fn on_host_disconnected(&mut self, error: Option<String>) -> bool {
        self.host = HostState::Disconnected;
        self.host_error = error;
        self.gateway.take().is_some()
    }

    /// A response carried a `Peercache` header. True if the settings changed.
    pub fn on_advertisement(&mut self, url: &str, header_value: &str) -> bool {
        self.settings.advertised(url, header_value)
    }

    /// The host permissions the browser granted (`permissions.getAll().origins`).
    /// True if that changed what is intercepted.
    pub fn set_host_access(&mut self, patterns: Vec<String>) -> bool {
        let access = HostAccess::from_patterns(&patterns);
        let changed = access != self.settings.access;
        self.settings.access = access;
        changed
    }

    /// The page to look at for a site's offer once the user allowed it: the
    /// front page of `origin` (port included), if it is an http(s) origin.
    pub fn offer_page(origin: &str) -> Option<String> {
        peercache_core::extension::origin_of(origin).map(|o| format!("{o}/"))
    }

    /// Sets the global toggle.
    pub fn set_enabled(&mut self, on: bool) {
        // Kept as the user's choice; a policy's value is in force while it exists.
        self.settings.enabled = on;
    }

    /// Applies the administrator's policy (the `storage.managed` object, or
    /// `null`/`undefined` for none). A policy that does not match the schema is
    /// refused whole, with the reason.
    pub fn set_managed(&mut self, policy: JsValue) -> Result<(), JsError> {
        let policy: ManagedPolicy = if policy.is_undefined() || policy.is_null() {
            ManagedPolicy::default()
        } else {
            serde_wasm_bindgen::from_value(policy)
                .map_err(|e| JsError::new(&format!("managed policy ignored: {e}")))?
        };
        self.settings.set_managed(policy);
        Ok(())
    }

    /// Sets "enable advertised sites automatically".
    pub fn set_auto_enable(&mut self, on: bool) {
        self.settings.auto_enable = on;
    }

    /// Flips one site's switch. False if the site is unknown.
    pub fn set_site_enabled(&mut self, origin: &str, on: bool) -> bool {
        self.settings.set_site_enabled(origin, on)
    }

    /// The declarativeNetRequest rules for the current state.
    pub fn rules(&self) -> JsValue {
        to_js(&self.settings.rules(self.gateway.as_ref(), &self.granted()))
    }

    /// Where to fetch `url` from instead, with the token to send, if it lies in
    /// an enabled site's scope and the host is connected: `{url, token}` or `null`.
    pub fn gateway_for(&self, url: &str) -> JsValue {
        match self.settings.gateway_url(self.gateway.as_ref(), url) {
            Some(g) => to_js(&serde_json::json!({
                "url": g,
                "token": self.gateway.as_ref().map(|g| g.token.clone()).unwrap_or_default(),
            })),
            None => JsValue::NULL,
        }
    }

    /// Is `url` sent to the site itself (an `allow` rule, after `not_shareable`)?
    pub fn is_direct(&self, url: &str) -> bool {
        self.settings.is_direct(url)
    }

    /// A content script reported the site's loopback permission. True if the
    /// rules must be reapplied.
    pub fn on_loopback(&mut self, origin: &str, state: &str) -> bool {
        self.loopback_state(origin, state)
    }

    /// The shell found that requests to `origin`'s scope would (or would no
    /// longer) carry cookies. True if the rules must be reapplied.
    pub fn on_cookies(&mut self, origin: &str, bound: bool) -> bool {
        self.settings.set_cookie_bound(origin, bound)
    }

    /// What the cookie store holds for `origin`: `at_root` cookies are sent to
    /// its scope root, `for_host` are the store's cookies for its host
    /// (`cookies.getAll({domain})`). Records whether its scope is cookie-bound
    /// (the rule is `peercache_core::extension::cookies_reach_scope`); a list it
    /// cannot read counts as cookies. True if the rules must be reapplied.
    pub fn on_cookie_store(&mut self, origin: &str, at_root: u32, for_host: JsValue) -> bool {
        let Some(scope) = self.settings.sites.get(origin).map(|s| s.scope.clone()) else {
            return false;
        };
        let bound = match serde_wasm_bindgen::from_value::<Vec<StoredCookie>>(for_host) {
            Ok(cookies) => peercache_core::extension::cookies_reach_scope(
                origin,
                &scope,
                at_root as usize,
                &cookies,
            ),
            Err(_) => true,
        };
        self.settings.set_cookie_bound(origin, bound)
    }

    /// The hosts of known sites a change to a cookie of `cookie_domain` may
    /// affect (the host itself or a subdomain of it).
    pub fn cookie_hosts(&self, cookie_domain: &str) -> Vec<String> {
        self.settings
            .sites
            .keys()
            .filter_map(|o| peercache_core::extension::host_of(o))
            .filter(|h| peercache_core::extension::cookie_domain_touches(h, cookie_domain))
            .collect()
    }

    /// Why a subresource request (`method`, `webRequest` headers `[{name,
    /// value}]`) must not go through peers, or `undefined` if it may. The rule is
    /// the one the server and host apply (`peercache_core::shareable`), plus:
    /// a `Range` request goes to the site. Headers it cannot read: refused.
    pub fn subresource_refusal(&self, method: &str, headers: JsValue) -> Option<String> {
        match headers_from_js(headers) {
            Some(h) => peercache_core::extension::subresource_refusal(method, &h),
            None => Some("unreadable request headers".into()),
        }
    }

    /// Sets the workload and cache limits (applied by the host at once).
    pub fn set_limits(&mut self, max_uploads: u32, upload_rate: f64, cache_max: f64) {
        if self.settings.managed.limits.is_some() {
            return;
        }
        // Kept within what JavaScript numbers hold exactly (2^53), so the settings
        // always convert back; NaN counts as 0 (no cap).
        let exact = |v: f64| {
            if v.is_nan() {
                0
            } else {
                v.clamp(0.0, MAX_EXACT_JS as f64) as u64
            }
        };
        self.settings.limits = UserLimits {
            max_uploads: max_uploads.min(peercache_core::extension::MAX_UPLOAD_SLOTS),
            upload_rate: exact(upload_rate),
            cache_max: exact(cache_max),
        };
    }

    /// The `limits` message for the host.
    pub fn limits_message(&self) -> JsValue {
        to_js(&self.limits_msg())
    }

    /// The popup's view model.
    pub fn view(&self) -> JsValue {
        to_js(&self.view_model())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_host_and_switches() {
        let mut b = Brain::default();
        assert!(b.set_host_access(vec!["https://s.example/*".into()]));
        assert!(
            b.settings
                .advertised("https://s.example/", r#"scope="/static/""#)
        );
        assert!(b.settings.set_site_enabled("https://s.example", true));
        assert_eq!(b.view_model().rules, 0, "no host, no rules");
        let status = FromHost::Status {
            gateway_port: 4100,
            token: "tok".into(),
            peer_addr: String::new(),
            peer_id: "p".into(),
            counters: Counters::default(),
            limits: HostLimits::default(),
            peers: Vec::new(),
            recent: Vec::new(),
            doctor: Vec::new(),
        };
        assert!(b.apply_host_message(status.clone()));
        assert!(!b.apply_host_message(status));
        assert_eq!(b.view_model().rules, 2);
        assert!(b.loopback_state("https://s.example", "granted"));
        assert!(!b.loopback_state("https://s.example", "granted"));
        assert!(
            !b.loopback_state("https://unknown.example", "granted"),
            "only enrolled sites"
        );
        assert!(b.loopback_state("https://s.example", "denied"));
        assert!(b.on_host_disconnected(Some("Native host has exited.".into())));
        assert_eq!(b.view_model().rules, 0);
        assert_eq!(b.view_model().host, HostState::Disconnected);
    }
}
