//! `/admin`: a live page of the server's offload, peers, objects and recent
//! serve / refer / defer decisions with their figures (B5). The page polls
//! `/admin/stats.json` every second and redraws; the JSON is also handy for
//! scripts.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::{AppState, DecisionRecord, Tally};
use crate::store::now_ms;

/// `GET /admin` and `/admin/stats.json`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/stats.json", get(stats_json))
}

/// One decision as the JSON and the page show it: its inputs, figures, verdict
/// and reason (code and sentence).
fn decision_json(d: &DecisionRecord) -> serde_json::Value {
    let e = &d.explained;
    let retry_after_s = match e.verdict {
        peercache_core::decide::Verdict::Defer { retry_after_s } => Some(retry_after_s),
        _ => None,
    };
    json!({
        "at_ms": d.at_ms,
        "path": d.path,
        "client": d.client,
        "inputs": e.inputs,
        "estimate_ms": e.estimate_ms,
        "target_ms": e.target_ms,
        "verdict": e.verdict.name(),
        "retry_after_s": retry_after_s,
        "reason": e.reason,
        "why": e.reason.describe(),
    })
}

/// The figures the page shows.
pub async fn stats_json(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let f = &state.figures;
    let now = now_ms();
    let (stats, peers, store_ok) = match (
        state.store.stats(now).await,
        state.store.peer_rows(now).await,
    ) {
        (Ok(s), Ok(p)) => (s, p, true),
        _ => (Default::default(), Vec::new(), false),
    };
    let served = f.shown(Tally::BytesServed);
    let (relayed_out, relayed_in) = state.site_relay.as_ref().map_or((0, 0), |r| r.bytes());
    let from_peers = f.shown(Tally::BytesFromPeers);
    let history: Vec<_> = f
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(t, s, p)| json!([t, s, p]))
        .collect();
    Json(json!({
        "requests_served": f.shown(Tally::Served),
        "requests_referred": f.shown(Tally::Referred),
        "bytes_served": served,
        "bytes_from_peers": from_peers,
        "offload": if served + from_peers > 0 { from_peers as f64 / (served + from_peers) as f64 } else { 0.0 },
        "mismatch_reports": f.shown(Tally::Mismatches),
        "bytes_in_flight": state.egress.snapshot().bytes_in_flight,
        "egress_limit": state.config.egress_limit,
        "egress_estimate": state.egress.estimate(),
        "relay_bytes_out": relayed_out,
        "relay_bytes_in": relayed_in,
        "relays": state.relays.iter().map(|r| r.url.clone()).collect::<Vec<_>>(),
        "store_ok": store_ok,
        "store_errors": f.shown(Tally::StoreErrors),
        "peers_live": stats.peers,
        "peers_serving": stats.serving_peers,
        "peers_delisted": stats.delisted,
        "objects_listed": stats.objects,
        "peers": peers.iter().map(|p| json!({
            "id": p.id,
            "addr": p.addr.as_deref().and_then(|a| peercache_core::peer::DialInfo::parse(a).ok()).map(|d| d.display()),
            "path": match p.direct { Some(true) => "direct", Some(false) => "relay only", None => "–" },
            "rtt_ms": p.rtt_ms,
            "load": p.load.map(|l| format!("{}/{}", l.active, l.limit)),
            "strikes": p.strikes, "objects": p.holdings,
        })).collect::<Vec<_>>(),
        "history": history,
        "decisions": state.decisions.newest_first().iter().map(decision_json).collect::<Vec<_>>(),
    }))
}

/// The page.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r##"<!doctype html>
<html><head><meta charset="utf-8"><title>peercache admin</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#1d2430;max-width:980px}
h1{font-size:20px;margin:0 0 12px}
h2{font-size:16px;margin:18px 0 0}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #dde1e7;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:22px}
table{border-collapse:collapse;width:100%;margin-top:12px}
td,th{padding:4px 10px;border-bottom:1px solid #eceef2;text-align:left;font-variant-numeric:tabular-nums}
svg{border:1px solid #dde1e7;border-radius:8px;margin-top:12px}
.bad{color:#b3261e}
</style></head>
<body>
<h1>peercache server</h1>
<div class="cards">
 <div class="card">offload<b id="offload">–</b></div>
 <div class="card">served / referred<b><span id="served">0</span> / <span id="referred">0</span></b></div>
 <div class="card">bytes from server<b id="bytes-served">0</b></div>
 <div class="card">bytes from peers<b id="bytes-peers">0</b></div>
 <div class="card">peers serving<b id="serving">0</b></div>
 <div class="card">clients (download only)<b id="clients">0</b></div>
 <div class="card">objects listed<b id="objects">0</b></div>
 <div class="card">mismatches<b id="mismatches">0</b></div>
 <div class="card">relayed (site egress, not offload)<b id="relayed">0</b></div>
 <div class="card">uplink (limit / measured)<b id="uplink">–</b></div>
</div>
<p id="store"></p>
<h2>bytes per second, by source <span id="chart-window" style="font-weight:normal;color:#5a6270"></span></h2>
<svg id="chart" width="940" height="200" viewBox="0 0 940 200"></svg>
<h2>recent decisions</h2>
<table><thead><tr><th>time</th><th>path</th><th>client</th><th>size</th><th>estimate</th><th>target</th><th>egress limit</th><th>in flight</th><th>client bandwidth</th><th>holders</th><th>verdict</th><th>reason</th></tr></thead><tbody id="decision-rows"></tbody></table>
<h2>peers</h2>
<table><thead><tr><th>peer</th><th>address</th><th>path</th><th>RTT</th><th>load</th><th>strikes</th><th>objects</th></tr></thead><tbody id="peer-rows"></tbody></table>
<script>
const fmt = (n) => { const u = ['B','KiB','MiB','GiB','TiB']; let i = 0; while (n >= 1024 && i < 4) { n /= 1024; i++; } return (i ? n.toFixed(1) : n) + ' ' + u[i]; };
const set = (id, v) => { document.getElementById(id).textContent = v; };
// Stacked bars of bytes/s from the server and from peers between samples, with
// a y axis in bytes/s and an x axis in time before now.
function chart(history) {
  const svg = document.getElementById('chart');
  const L = 80, R = 930, T = 24, B = 170;
  if (history.length < 2) {
    svg.innerHTML = '<text x="12" y="24" fill="#5a6270">bytes per second from the server and from peers appear here after a few seconds</text>';
    set('chart-window', '');
    return;
  }
  const rates = [];
  for (let i = 1; i < history.length; i++) {
    const dt = Math.max(1, history[i][0] - history[i-1][0]);
    rates.push([(history[i][1] - history[i-1][1]) / dt, (history[i][2] - history[i-1][2]) / dt]);
  }
  const span = Math.max(1, history[history.length - 1][0] - history[0][0]);
  const spanText = span >= 120 ? Math.round(span / 60) + ' min' : span + ' s';
  set('chart-window', `(last ${spanText}, updated every second)`);
  const max = Math.max(1, ...rates.map(r => r[0] + r[1]));
  const h = B - T, w = (R - L) / rates.length;
  let out = '';
  for (const f of [0, 0.5, 1]) {
    const y = B - h * f;
    out += `<line x1="${L}" x2="${R}" y1="${y}" y2="${y}" stroke="#eceef2"/>`;
    out += `<text x="${L - 6}" y="${y + 4}" text-anchor="end" font-size="11" fill="#5a6270">${fmt(Math.round(max * f))}/s</text>`;
  }
  rates.forEach((r, i) => {
    const hs = h * r[0] / max, hp = h * r[1] / max;
    const x = L + i * w;
    out += `<rect x="${x}" y="${B-hs-hp}" width="${Math.max(1,w-1)}" height="${hp}" fill="#2a7"/>`;
    out += `<rect x="${x}" y="${B-hs}" width="${Math.max(1,w-1)}" height="${hs}" fill="#8a94a6"/>`;
  });
  out += `<line x1="${L}" x2="${R}" y1="${B}" y2="${B}" stroke="#8a94a6"/><line x1="${L}" x2="${L}" y1="${T}" y2="${B}" stroke="#8a94a6"/>`;
  const ago = (s) => s === 0 ? 'now' : (span >= 120 ? '−' + Math.round(s / 60) + ' min' : '−' + s + ' s');
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    const anchor = f === 0 ? 'start' : f === 1 ? 'end' : 'middle';
    out += `<text x="${L + (R - L) * f}" y="${B + 16}" text-anchor="${anchor}" font-size="11" fill="#5a6270">${ago(Math.round(span * (1 - f)))}</text>`;
  }
  out += `<text x="${(L + R) / 2}" y="${B + 30}" text-anchor="middle" font-size="11" fill="#5a6270">time</text>`;
  out += `<rect x="${L}" y="6" width="10" height="10" fill="#2a7"/><text x="${L + 14}" y="15" font-size="12" fill="#1d2430">from peers</text>`;
  out += `<rect x="${L + 100}" y="6" width="10" height="10" fill="#8a94a6"/><text x="${L + 114}" y="15" font-size="12" fill="#1d2430">from the server</text>`;
  svg.innerHTML = out;
}
async function refresh() {
  try {
    const s = await (await fetch('/admin/stats.json')).json();
    set('offload', (100 * s.offload).toFixed(1) + '%');
    set('served', s.requests_served); set('referred', s.requests_referred);
    set('bytes-served', fmt(s.bytes_served)); set('bytes-peers', fmt(s.bytes_from_peers));
    set('serving', s.peers_serving); set('clients', Math.max(0, s.peers_live - s.peers_serving)); set('objects', s.objects_listed);
    set('mismatches', s.mismatch_reports);
    set('relayed', fmt(s.relay_bytes_out));
    set('uplink', (s.egress_limit == null ? 'no limit' : fmt(s.egress_limit) + '/s') + ' / '
      + (s.egress_estimate == null ? 'not yet' : fmt(s.egress_estimate) + '/s'));
    const st = document.getElementById('store');
    st.className = s.store_ok ? '' : 'bad';
    st.textContent = s.store_ok ? '' : 'look-up table unavailable: serving every request directly';
    // Clients that only download are counted apart from the serving peers.
    const rows = document.getElementById('peer-rows');
    rows.replaceChildren(...s.peers.map(p => {
      const tr = document.createElement('tr');
      for (const v of [p.id.slice(0, 16) + '…', p.addr ?? '(client only: downloads, serves nobody)', p.path, p.rtt_ms == null ? '–' : p.rtt_ms + ' ms', p.load ?? '–', p.strikes, p.objects]) {
        const td = document.createElement('td'); td.textContent = v; tr.append(td);
      }
      return tr;
    }));
    const decisions = document.getElementById('decision-rows');
    decisions.replaceChildren(...s.decisions.map(d => {
      const tr = document.createElement('tr');
      const i = d.inputs, e = i.egress;
      const verdict = d.verdict + (d.retry_after_s == null ? '' : ` (${d.retry_after_s} s)`);
      for (const v of [new Date(d.at_ms).toLocaleTimeString(), d.path, d.client == null ? '–' : d.client.slice(0, 16) + '…',
          fmt(i.size), d.estimate_ms + ' ms', d.target_ms + ' ms',
          e.limit_bytes_per_s == null ? 'unlimited' : fmt(e.limit_bytes_per_s) + '/s', fmt(e.bytes_in_flight),
          i.client_bandwidth == null ? '–' : fmt(i.client_bandwidth) + '/s', i.usable_holders, verdict, d.why]) {
        const td = document.createElement('td'); td.textContent = v; tr.append(td);
      }
      return tr;
    }));
    chart(s.history);
    document.body.dataset.loaded = '1';
  } catch (e) { /* the next tick retries */ }
}
refresh(); setInterval(refresh, 1000);
</script>
</body></html>"##;
