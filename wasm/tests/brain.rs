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
