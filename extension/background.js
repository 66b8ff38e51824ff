// peercache background: a thin shell around the wasm brain (wasm/src/lib.rs).
// It forwards browser events to the brain and applies what the brain decides:
// interception rules, the config sent to the native host, the popup's view.
import init, { Brain } from './wasm/peercache_wasm.js';

const HOST_NAME = 'org.peercache.host';
const api = globalThis.browser ?? globalThis.chrome;

let brain = null;
let port = null;
let retryMs = 1000;
let pendingAds = [];
let rulesChain = Promise.resolve();

// Test and debugging hook: `ready` turns true once the wasm is loaded, the host
// answered and the rules for the current settings are in force.
globalThis.peercache = { ready: false, hostSeen: false, view: () => brain?.view() };

function log(...args) { console.log('[peercache]', ...args); }

/** Puts the brain's rules in force; resolves true once they are, false if the browser refused them. */
function applyRules() {
  rulesChain = rulesChain.then(async () => {
    const rules = brain ? brain.rules() : [];
    const existing = await api.declarativeNetRequest.getSessionRules();
    await api.declarativeNetRequest.updateSessionRules({
      removeRuleIds: existing.map((r) => r.id),
      addRules: rules,
    });
    return true;
  }).catch((e) => { log('applying rules failed:', e?.message ?? e); return false; });
  return rulesChain;
}

// A site whose scope would receive cookies is not intercepted at all (B2): the
// redirect rules cannot see a request's headers, so the cookie store is asked.
let cookieCheck = null;
const cookieHosts = new Set(); // hosts whose cookies changed since the last check
/** Re-reads the cookie state of every known site, or only of sites on `hosts`. */
async function checkCookies(hosts = null) {
  if (!api.cookies || !brain) return;
  let changed = false;
  const sites = (brain.view()?.sites ?? [])
    .filter((site) => !hosts || hosts.has(new URL(site.origin).hostname));
  for (const site of sites) {
    let bound = true; // if the store cannot be read, assume cookies: never intercept blind
    try {
      // Cookies sent to the scope root, and cookies for a deeper path inside it.
      const atRoot = await api.cookies.getAll({ url: `${site.origin}${site.scope}` });
      const host = new URL(site.origin).hostname;
      const inside = (await api.cookies.getAll({ domain: host }))
        .filter((c) => c.path.startsWith(site.scope) && (!c.hostOnly || c.domain === host));
      bound = atRoot.length + inside.length > 0;
    } catch (e) {
      log('reading cookies failed; not intercepting', site.origin, e?.message ?? e);
    }
    if (brain.on_cookies(site.origin, bound)) changed = true;
  }
  if (changed) await applyRules();
}

// Pages change cookies all the time: only sites on the changed cookie's host
// (or a parent domain's cookie) are checked again, at most every 100 ms.
function cookiesChanged(change) {
  const domain = String(change?.cookie?.domain ?? '').replace(/^\./, '');
  if (!brain || !domain) return;
  for (const site of brain.view()?.sites ?? []) {
    const host = new URL(site.origin).hostname;
    if (host === domain || host.endsWith(`.${domain}`)) cookieHosts.add(host);
  }
  if (cookieHosts.size === 0 || cookieCheck) return;
  cookieCheck = setTimeout(() => {
    const hosts = new Set(cookieHosts);
    cookieHosts.clear();
    cookieCheck = null;
    checkCookies(hosts);
  }, 100);
}

async function settingsChanged() {
  await api.storage.local.set({ settings: brain.settings() });
  await checkCookies();
  if (port) {
    try {
      port.postMessage(brain.config_message());
      port.postMessage(brain.limits_message());
    } catch (e) { log('post failed', e); }
  }
  await applyRules();
}

function connect() {
  try {
    port = api.runtime.connectNative(HOST_NAME);
  } catch (e) {
    brain.on_host_disconnected(String(e?.message ?? e));
    port = null;
    setTimeout(connect, retryMs);
    return;
  }
  port.onMessage.addListener(async (msg) => {
    lastHeard = Date.now();
    stalled = false;
    let changed = false;
    try { changed = brain.on_host_message(msg); } catch (e) { log(e); return; }
    if (msg.type === 'hello') {
      retryMs = 1000;
      port.postMessage(brain.config_message());
      port.postMessage(brain.limits_message());
    }
    if (msg.type === 'not_shareable') {
      // The site answered with a cookie or a private response: from now on this
      // URL goes to the site itself (remembered across restarts). Once the rule is
      // in force, the gateway may send the waiting request there too.
      log('not shareable, fetched from the site from now on:', msg.url, msg.reason);
      if (changed) await settingsChanged();
      // Rules computed now include the allow rule; answer only once they are in force.
      const inForce = await applyRules();
      if (inForce && port && brain.is_direct(String(msg.url))) {
        try { port.postMessage({ type: 'direct_ready', url: msg.url }); } catch (_) { /* reconnecting */ }
      }
      return;
    }
    if (changed) await applyRules();
    if (msg.type === 'status') {
      globalThis.peercache.hostSeen = true;
      await rulesChain;
      globalThis.peercache.ready = true;
    }
  });
  port.onDisconnect.addListener(async () => {
    const error = api.runtime.lastError?.message ?? 'native host disconnected';
    log('host disconnected:', error);
    port = null;
    brain.on_host_disconnected(error);
    await applyRules();
    // The page keeps working without the host; reconnect with backoff.
    globalThis.peercache.ready = true;
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 30000);
  });
  lastHeard = Date.now();
  port.postMessage(brain.hello());
}

// A host that hangs (stopped, swapping, deadlocked) keeps its port open, so the
// browser reports nothing: ask for a status every 2 s, and after 6 s of silence
// take the rules down so pages load from the sites. The next answer brings the
// gateway, and the rules, back.
const HOST_STALL_MS = 6000;
const HOST_REPLACE_MS = 30000;
let lastHeard = Date.now();
let stalled = false;
setInterval(async () => {
  if (!port || !brain) return;
  try { port.postMessage({ type: 'get_status' }); } catch (_) { return; }
  const silentFor = Date.now() - lastHeard;
  if (!stalled && silentFor > HOST_STALL_MS) {
    stalled = true;
    log('the native host stopped answering; pages load from the sites until it does');
    brain.on_host_disconnected('the native host stopped answering');
    await applyRules();
  }
  if (silentFor > HOST_REPLACE_MS) {
    // Still hung: let it go and start a fresh one (disconnect() does not fire our
    // own onDisconnect).
    log('replacing the hung native host');
    try { port.disconnect(); } catch (_) { /* gone */ }
    port = null;
    setTimeout(connect, 0);
  }
}, 2000);

function onHeaders(details) {
  if (details.incognito) return;
  const header = details.responseHeaders?.find((h) => h.name.toLowerCase() === 'peercache');
  if (!header) return;
  if (!brain) { if (pendingAds.length < 64) pendingAds.push([details.url, header.value]); return; }
  if (brain.on_advertisement(details.url, header.value)) settingsChanged();
}

// Firefox: subresources of enabled sites are not redirected (Local Network Access
// would prompt); instead the background replaces the ORIGINAL response's body with
// verified bytes from the gateway (filterResponseData), and asks the server for
// headers only, so no byte travels twice. Status and content type stay the
// server's, as the page sees them.
// A request that carries cookies or authorization, or whose answer is not the
// server's headers-only reply (a Set-Cookie or private response is always sent
// whole), keeps its own body untouched and the gateway fetch is cancelled.
const SUBRESOURCE_TYPES = ['image', 'script', 'stylesheet', 'media', 'font', 'xmlhttprequest'];
// requestId → { url, mode: 'pending' | 'peers' | 'original', abort, body, failed }
const replaced = new Map();
const hasHeader = (list, ...names) => (list ?? []).some((h) => names.includes(h.name.toLowerCase()));

// When the gateway fails or goes silent (no first byte in 5 s, no next byte in
// 10 s), the rest of the body comes from the site itself, a Range request from
// the first byte not yet written, so the page never gets a short or empty body.
const GATEWAY_FIRST_BYTE_MS = 5000;
const GATEWAY_STALL_MS = 10000;

async function restFromSite(url, offset, filter, entry) {
  const headers = {};
  if (offset > 0) {
    headers.Range = `bytes=${offset}-`;
    // Only the rest of the same version (the server's ETag is the object's hash).
    if (entry.etag) headers['If-Range'] = entry.etag;
  }
  const resp = await fetch(url, { headers, cache: 'no-store', credentials: 'omit' });
  if (resp.status !== 200 && resp.status !== 206) throw new Error(`the site answered ${resp.status}`);
  if (offset > 0 && resp.status === 200 && entry.etag) {
    // The file changed since the bytes already written: they cannot be spliced.
    resp.body?.cancel();
    throw new Error('the file changed on the site mid-way');
  }
  // A site that ignores Range sends everything: skip what was written already.
  let skip = resp.status === 200 ? offset : 0;
  const reader = resp.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    if (entry.failed) { reader.cancel(); return; }
    if (skip >= value.byteLength) { skip -= value.byteLength; continue; }
    filter.write(skip ? value.subarray(skip) : value);
    skip = 0;
  }
}

/** Reads `promise` or gives up after `ms`, aborting `abort`. */
function withDeadline(promise, ms, abort) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => { abort.abort(); reject(new Error(`the gateway was silent for ${ms} ms`)); }, ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function replaceBody(details) {
  // tabId -1: the background's own requests (restFromSite), never replaced.
  if (!brain || details.method !== 'GET' || details.incognito || details.tabId === -1 || replaced.size > 1000) return {};
  if (replaced.has(details.requestId)) return {}; // a redirect hop of a request already handled
  const target = brain.gateway_for(details.url);
  if (!target) return {};
  const filter = api.webRequest.filterResponseData(details.requestId);
  const entry = { url: details.url, target, mode: 'pending', abort: new AbortController(), body: null, failed: false };
  replaced.set(details.requestId, entry);
  const done = () => { if (replaced.get(details.requestId) === entry) replaced.delete(details.requestId); };
  const close = () => { try { filter.close(); } catch (_) { /* already closed or failed */ } };
  filter.ondata = (event) => {
    // The original body is the page's unless the server sent headers only.
    if (entry.mode === 'original') filter.write(event.data);
  };
  filter.onstop = () => { if (entry.mode === 'original') { close(); done(); } };
  filter.onstart = async () => {
    if (entry.mode !== 'peers' || !entry.body) {
      entry.mode = 'original';
      entry.abort.abort();
      return;
    }
    let written = 0;
    try {
      const resp = await withDeadline(entry.body, GATEWAY_FIRST_BYTE_MS, entry.abort);
      if (!resp.ok) throw new Error(`gateway ${resp.status}`);
      const reader = resp.body.getReader();
      for (;;) {
        const { done: end, value } = await withDeadline(reader.read(), GATEWAY_STALL_MS, entry.abort);
        if (end) break;
        filter.write(value);
        written += value.byteLength;
      }
    } catch (e) {
      if (!entry.failed) {
        log('subresource through peers failed, the rest comes from the site:', e?.message ?? e);
        try {
          await restFromSite(entry.url, written, filter, entry);
        } catch (e2) {
          log('and from the site too:', e2?.message ?? e2);
        }
      }
    } finally {
      close();
      done();
    }
  };
  // The page went away or the request failed: nothing more to write.
  filter.onerror = () => { entry.failed = true; entry.abort.abort(); done(); };
  return {};
}

function askHeadersOnly(details) {
  const entry = replaced.get(details.requestId);
  // Only the request the entry was made for (not a later redirect hop).
  if (!entry || entry.mode !== 'pending' || entry.url !== details.url) return {};
  // Cookies or authorization: never through peers (B2), so the gateway is not even
  // asked. A Range request (media): the page expects exactly the part it asked
  // for, so the site answers it.
  if (hasHeader(details.requestHeaders, 'cookie', 'authorization', 'range')) {
    entry.mode = 'original';
    return {};
  }
  // Start the gateway fetch now, alongside the headers-only request.
  entry.body = fetch(entry.target.url, {
    headers: { 'x-peercache-token': entry.target.token }, cache: 'no-store', signal: entry.abort.signal,
  });
  entry.body.catch(() => {}); // cancelled, or reported in onstart
  const requestHeaders = details.requestHeaders ?? [];
  requestHeaders.push({ name: 'Peercache-Headers-Only', value: '1' });
  return { requestHeaders };
}

function headersOnlyAnswer(details) {
  const entry = replaced.get(details.requestId);
  if (!entry || entry.mode !== 'pending' || entry.url !== details.url) {
    // A redirect hop, or a request left alone: the original body stays.
    if (entry && entry.mode === 'pending') { entry.mode = 'original'; entry.abort.abort(); }
    return {};
  }
  entry.mode = hasHeader(details.responseHeaders, 'peercache-headers-only') && entry.body ? 'peers' : 'original';
  entry.etag = details.responseHeaders?.find((h) => h.name.toLowerCase() === 'etag')?.value ?? null;
  if (entry.mode === 'original') entry.abort.abort();
  return {};
}

if (api.webRequest.filterResponseData) {
  api.webRequest.onBeforeRequest.addListener(
    replaceBody,
    { urls: ['https://*/*', 'http://*/*'], types: SUBRESOURCE_TYPES },
    ['blocking'],
  );
  api.webRequest.onBeforeSendHeaders.addListener(
    askHeadersOnly,
    { urls: ['https://*/*', 'http://*/*'], types: SUBRESOURCE_TYPES },
    ['blocking', 'requestHeaders'],
  );
  // Blocking, so the verdict is in before the filter's onstart.
  api.webRequest.onHeadersReceived.addListener(
    headersOnlyAnswer,
    { urls: ['https://*/*', 'http://*/*'], types: SUBRESOURCE_TYPES },
    ['blocking', 'responseHeaders'],
  );
}

api.cookies?.onChanged.addListener(cookiesChanged);

// Listeners are registered synchronously so a woken worker receives the event.
api.webRequest.onHeadersReceived.addListener(
  onHeaders,
  { urls: ['https://*/*', 'http://*/*'], types: ['main_frame', 'sub_frame'] },
  ['responseHeaders'],
);

let pendingLoopback = [];
api.runtime.onMessage.addListener((msg, sender, sendResponse) => {
  if (sender.id !== api.runtime.id) return false;
  if (msg?.cmd === 'loopback') {
    // From the content script of a page (never from incognito: not allowed there).
    // The origin is the sender's as the browser reports it, never the message's.
    if (sender.tab?.incognito) return false;
    const origin = sender.origin ?? (sender.url ? new URL(sender.url).origin : null);
    if (!origin) return false;
    if (!brain) { if (pendingLoopback.length < 64) pendingLoopback.push([origin, String(msg.state)]); return false; }
    if (brain.on_loopback(String(origin), String(msg.state))) applyRules();
    return false;
  }
  // Everything else changes settings or reveals them: only the extension's own
  // pages (the popup) may ask, never a content script in a web page.
  if (!sender.url?.startsWith(api.runtime.getURL('')) || !brain) return false;
  (async () => {
    switch (msg?.cmd) {
      case 'limits':
        brain.set_limits(Number(msg.max_uploads) | 0, Number(msg.upload_rate) || 0, Number(msg.cache_max) || 0);
        await settingsChanged();
        break;
      case 'toggle': brain.set_enabled(!!msg.on); await settingsChanged(); break;
      case 'auto': brain.set_auto_enable(!!msg.on); await settingsChanged(); break;
      case 'site': if (brain.set_site_enabled(String(msg.origin), !!msg.on)) await settingsChanged(); break;
      case 'view': break;
      default: sendResponse({ error: 'unknown command' }); return;
    }
    if (port) { try { port.postMessage({ type: 'get_status' }); } catch (_) { /* reconnecting */ } }
    sendResponse(brain.view());
  })();
  return true;
});

// Admin-managed settings (storage.managed): Chromium from the extension policy,
// Firefox from policies.json or a managed storage manifest. None is normal.
async function readManaged() {
  try {
    return await api.storage.managed.get();
  } catch (_) {
    return null;
  }
}

function applyManaged(policy) {
  try {
    brain.set_managed(policy && Object.keys(policy).length ? policy : null);
  } catch (e) {
    log(e?.message ?? e);
  }
}

api.storage.onChanged.addListener(async (_changes, area) => {
  if (area !== 'managed' || !brain) return;
  const policy = await readManaged();
  applyManaged(policy);
  await api.storage.local.set({ managedSeen: policy ?? null });
  await settingsChanged();
});

const startedAt = performance.now();
init().then(async () => {
  globalThis.peercache.timings = { wasm: performance.now() - startedAt };
  const saved = (await api.storage.local.get('settings')).settings;
  brain = new Brain(saved);
  // The last policy seen applies from the first moment (managed storage can take
  // seconds to answer); the fresh one replaces it when it arrives.
  applyManaged((await api.storage.local.get('managedSeen')).managedSeen ?? null);
  // Chromium takes seconds to answer storage.managed when no policy is set, so
  // the policy is applied when it arrives instead of holding up the start.
  readManaged().then(async (policy) => {
    applyManaged(policy);
    await api.storage.local.set({ managedSeen: policy ?? null });
    globalThis.peercache.timings.managed = performance.now() - startedAt;
    globalThis.peercache.policyRead = true;
    await settingsChanged();
  }).catch((e) => log('applying the managed policy failed:', e?.message ?? e));
  for (const [origin, state] of pendingLoopback) brain.on_loopback(origin, state);
  pendingLoopback = [];
  for (const [url, value] of pendingAds) brain.on_advertisement(url, value);
  pendingAds = [];
  await api.storage.local.set({ settings: brain.settings() });
  await checkCookies();
  await applyRules();
  connect();
}).catch((e) => log('wasm failed to start:', e));
