//! The brain as JavaScript sees it, run under Node with `wasm-bindgen-test`.

#![cfg(target_arch = "wasm32")]

use peercache_wasm::Brain;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::wasm_bindgen_test;

fn get(v: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(v, &JsValue::from_str(key)).unwrap()
}

#[wasm_bindgen_test]
fn enrolment_switch_and_rules_through_js_values() {
    let mut brain = Brain::new(JsValue::UNDEFINED);
    assert!(brain.on_advertisement("https://198.51.100.2/", "scope=\"/static/\""));
    let status = js_sys::JSON::parse(
        r#"{"type":"status","gateway_port":4242,"token":"secret","peer_addr":"","peer_id":"p1",
            "counters":{"bytes_from_peers":5,"bytes_from_server":0,"bytes_served":0,"verification_failures":0}}"#,
    )
    .unwrap();
    assert!(brain.on_host_message(status).unwrap());
    assert_eq!(
        js_sys::Array::from(&brain.rules()).length(),
        0,
        "site not switched on yet"
    );
    assert!(brain.set_site_enabled("https://198.51.100.2", true));
    assert_eq!(
        js_sys::Array::from(&brain.rules()).length(),
        0,
        "the browser has not granted access to the site yet"
    );
    let site = js_sys::Array::from(&get(&brain.view(), "sites")).get(0);
    assert_eq!(get(&site, "access").as_bool(), Some(false));
    assert_eq!(
        get(&site, "access_pattern").as_string().as_deref(),
        Some("https://198.51.100.2/*")
    );
    assert!(brain.set_host_access(vec!["https://198.51.100.2/*".into()]));
    assert!(!brain.set_host_access(vec!["https://198.51.100.2/*".into()]));
    assert_eq!(
        Brain::offer_page("https://198.51.100.2:8443").as_deref(),
        Some("https://198.51.100.2:8443/")
    );
    assert_eq!(Brain::offer_page("javascript:alert(1)"), None);
    let rules = js_sys::Array::from(&brain.rules());
    assert_eq!(rules.length(), 2);
    let text = js_sys::JSON::stringify(&rules)
        .unwrap()
        .as_string()
        .unwrap();
    assert!(text.contains("127.0.0.1:4242/g/"));
    brain.set_enabled(false);
    assert_eq!(js_sys::Array::from(&brain.rules()).length(), 0);
    let view = brain.view();
    assert_eq!(
        get(&get(&view, "counters"), "bytes_from_peers").as_f64(),
        Some(5.0)
    );
}

#[wasm_bindgen_test]
fn settings_survive_a_round_trip_and_garbage_is_ignored() {
    let mut brain = Brain::new(JsValue::UNDEFINED);
    brain.on_advertisement("https://a.example/", "scope=\"/s/\"");
    brain.set_site_enabled("https://a.example", true);
    let restored = Brain::new(brain.settings());
    let sites = get(&restored.view(), "sites");
    assert_eq!(js_sys::Array::from(&sites).length(), 1);
    let fresh = Brain::new(JsValue::from_str("not settings"));
    assert_eq!(
        js_sys::Array::from(&get(&fresh.view(), "sites")).length(),
        0
    );
    let mut b = Brain::new(JsValue::UNDEFINED);
    assert!(b.on_host_message(JsValue::from_str("{}")).is_err());
}

fn json(text: &str) -> JsValue {
    js_sys::JSON::parse(text).unwrap()
}

const STATUS_WITH_PEERS: &str = r#"{"type":"status","gateway_port":4242,"token":"secret","peer_addr":"","peer_id":"p1",
    "counters":{"bytes_from_peers":5,"bytes_from_server":0,"bytes_served":0,"verification_failures":0},
    "peers":[{"site":"https://198.51.100.2","id":"peer-a","addr":"http://192.0.2.7:4000","bytes":8388608,"idle_secs":3}]}"#;

#[wasm_bindgen_test]
fn a_not_shareable_url_gets_an_allow_rule_and_the_view_lists_peers() {
    let mut brain = Brain::new(JsValue::UNDEFINED);
    brain.set_host_access(vec!["https://198.51.100.2/*".into()]);
    brain.on_advertisement("https://198.51.100.2/", "scope=\"/static/\"");
    brain.set_site_enabled("https://198.51.100.2", true);
    assert!(brain.on_host_message(json(STATUS_WITH_PEERS)).unwrap());
    let peers = js_sys::Array::from(&get(&brain.view(), "peers"));
    assert_eq!(peers.length(), 1);
    assert_eq!(
        get(&peers.get(0), "addr").as_string().unwrap(),
        "http://192.0.2.7:4000"
    );
    let notice = json(
        r#"{"type":"not_shareable","url":"https://198.51.100.2/static/session.js","reason":"response has Set-Cookie"}"#,
    );
    assert!(
        brain.on_host_message(notice.clone()).unwrap(),
        "rules change"
    );
    assert!(!brain.on_host_message(notice).unwrap(), "only once");
    assert!(brain.is_direct("https://198.51.100.2/static/session.js"));
    assert!(!brain.is_direct("https://198.51.100.2/static/app.js"));
    let rules = js_sys::JSON::stringify(&brain.rules())
        .unwrap()
        .as_string()
        .unwrap();
    assert!(rules.contains(r#""type":"allow""#), "{rules}");
    assert!(
        brain
            .gateway_for("https://198.51.100.2/static/session.js")
            .is_null()
    );
    assert!(
        !brain
            .gateway_for("https://198.51.100.2/static/app.js")
            .is_null()
    );
    // Cookies for the scope: nothing of the site is intercepted, until they go.
    assert!(brain.on_cookies("https://198.51.100.2", true));
    assert!(
        brain
            .gateway_for("https://198.51.100.2/static/app.js")
            .is_null()
    );
    let site = js_sys::Array::from(&get(&brain.view(), "sites")).get(0);
    assert_eq!(get(&site, "cookies").as_bool(), Some(true));
    assert!(brain.on_cookies("https://198.51.100.2", false));
    assert!(
        !brain
            .gateway_for("https://198.51.100.2/static/app.js")
            .is_null()
    );
    // Remembered across a restart.
    let restored = Brain::new(brain.settings());
    assert!(
        restored
            .gateway_for("https://198.51.100.2/static/session.js")
            .is_null()
    );
}

#[wasm_bindgen_test]
fn a_managed_policy_locks_what_it_sets_and_a_bad_one_is_refused() {
    let mut brain = Brain::new(JsValue::UNDEFINED);
    brain
        .set_managed(json(
            r#"{"sites":["https://198.51.100.2"],"limits":{"max_uploads":2,"upload_rate":1048576,"cache_max":67108864}}"#,
        ))
        .unwrap();
    // Listed before it was reached (not allowed in this browser yet): the popup
    // shows it with what to ask the browser for.
    let sites = js_sys::Array::from(&get(&brain.view(), "sites"));
    assert_eq!(sites.length(), 1);
    let unseen = sites.get(0);
    assert_eq!(get(&unseen, "advertised").as_bool(), Some(false));
    assert_eq!(get(&unseen, "access").as_bool(), Some(false));
    assert_eq!(
        get(&unseen, "access_pattern").as_string().as_deref(),
        Some("https://198.51.100.2/*")
    );
    assert!(brain.on_advertisement("https://198.51.100.2/", "scope=\"/static/\""));
    let view = brain.view();
    let sites = js_sys::Array::from(&get(&view, "sites"));
    assert_eq!(sites.length(), 1, "listed once");
    let site = sites.get(0);
    assert_eq!(get(&site, "advertised").as_bool(), Some(true));
    assert_eq!(get(&site, "enabled").as_bool(), Some(true));
    assert_eq!(get(&site, "managed").as_bool(), Some(true));
    assert!(!brain.set_site_enabled("https://198.51.100.2", false));
    brain.set_limits(9, 0.0, 0.0);
    assert_eq!(
        get(&brain.limits_message(), "max_uploads").as_f64(),
        Some(2.0)
    );
    assert_eq!(get(&get(&view, "managed"), "limits").as_bool(), Some(true));
    assert!(
        brain
            .set_managed(json(r#"{"sites":"not a list"}"#))
            .is_err()
    );
    assert_eq!(
        get(&brain.limits_message(), "max_uploads").as_f64(),
        Some(2.0),
        "a bad policy changes nothing"
    );
    brain.set_managed(JsValue::NULL).unwrap();
    assert!(
        brain.set_site_enabled("https://198.51.100.2", false),
        "policy gone"
    );
}

#[wasm_bindgen_test]
fn huge_limits_are_clamped_so_the_settings_still_convert() {
    let mut brain = Brain::new(JsValue::UNDEFINED);
    brain.on_advertisement("https://a.example/", "scope=\"/s/\"");
    brain.set_limits(5000, f64::INFINITY, 1e300);
    let saved = brain.settings();
    assert!(!saved.is_null(), "settings still convert");
    let limits = get(&saved, "limits");
    assert_eq!(get(&limits, "max_uploads").as_f64(), Some(1024.0));
    assert_eq!(get(&limits, "cache_max").as_f64(), Some(9007199254740991.0));
    brain.set_limits(1, f64::NAN, -5.0);
    assert_eq!(
        get(&get(&brain.settings(), "limits"), "upload_rate").as_f64(),
        Some(0.0)
    );
    assert!(!brain.view().is_null());
}

#[wasm_bindgen_test]
fn the_subresource_test_reads_webrequest_headers() {
    let brain = Brain::new(JsValue::UNDEFINED);
    let plain = json(r#"[{"name":"Accept","value":"*/*"},{"name":"X-Bin"}]"#);
    assert_eq!(brain.subresource_refusal("GET", plain), None);
    assert_eq!(brain.subresource_refusal("GET", JsValue::UNDEFINED), None);
    for headers in [
        r#"[{"name":"Cookie","value":"a=b"}]"#,
        r#"[{"name":"authorization","value":"Basic eA=="}]"#,
        r#"[{"name":"Range","value":"bytes=10-"}]"#,
        r#""not a list""#,
    ] {
        assert!(
            brain.subresource_refusal("GET", json(headers)).is_some(),
            "{headers}"
        );
    }
    assert!(brain.subresource_refusal("POST", json("[]")).is_some());
}

#[wasm_bindgen_test]
fn the_cookie_store_binds_a_scope_through_js_values() {
    let mut brain = Brain::new(JsValue::UNDEFINED);
    assert!(brain.on_advertisement("https://s.example/", "scope=\"/static/\""));
    let outside = json(r#"[{"domain":"s.example","path":"/app/","hostOnly":true}]"#);
    assert!(!brain.on_cookie_store("https://s.example", 0, outside));
    let inside = json(r#"[{"domain":".s.example","path":"/static/x/","hostOnly":false}]"#);
    assert!(brain.on_cookie_store("https://s.example", 0, inside));
    assert!(brain.on_cookie_store("https://s.example", 0, json("[]")));
    assert!(
        brain.on_cookie_store("https://s.example", 0, json("42")),
        "unreadable: bound"
    );
    assert!(!brain.on_cookie_store("https://unknown.example", 3, json("[]")));
    assert_eq!(
        brain.cookie_hosts(".example"),
        vec!["s.example".to_string()]
    );
    assert!(brain.cookie_hosts("other.example").is_empty());
}
