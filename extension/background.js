// peercache background: only wires browser events to the wasm brain
// (wasm/src/lib.rs: every decision) and to small modules that take the browser
// APIs as arguments and are unit-tested under node (extension/test/):
// host-link.js (the native host connection), body-replace.js (Firefox body
// replacement), cookie-watch.js (the cookie store). It applies what the brain
// decides: interception rules, the config sent to the native host, the popup's view.
import init, { Brain } from './wasm/peercache_wasm.js';
import { createHostLink, HOST_NAME, HOST_POLL_MS } from './host-link.js';
import { createBodyReplacer, SUBRESOURCE_TYPES } from './body-replace.js';
import { createCookieWatch } from './cookie-watch.js';

const api = globalThis.browser ?? globalThis.chrome;

let brain = null;
let pendingAds = [];
let rulesChain = Promise.resolve();

// Test and debugging hook: `ready` turns true once the wasm is loaded, the host
// answered and the rules for the current settings are in force.
globalThis.peercache = { ready: false, hostSeen: false, view: () => brain?.view() };

function log(...args) { console.log('[peercache]', ...args); }
const timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (t) => clearTimeout(t),
};

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

const cookieWatch = createCookieWatch({
  cookies: api.cookies, brain: () => brain, applyRules, setTimeout: timers.setTimeout, log,
});

/** Reads the sites the browser lets us reach (host permissions) into the brain; true if that changed the rules. */
async function refreshAccess() {
  if (!brain) return false;
  const { origins = [] } = await api.permissions.getAll();
  return brain.set_host_access(origins);
}

// A granted site's offer: its front page's `peercache` header, fetched without
// cookies. 'offered' (the site is listed now), 'none' (the page answered
// without one) or 'unreachable' (no answer: nothing is concluded from it).
const PROBE_TIMEOUT_MS = 10000;
async function probeSite(origin) {
  const page = Brain.offer_page(String(origin));
  if (!page || !brain) return 'unreachable';
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), PROBE_TIMEOUT_MS);
  try {
    const res = await fetch(page, { credentials: 'omit', cache: 'no-store', signal: abort.signal });
    const ad = res.headers.get('peercache');
    res.body?.cancel().catch(() => {});
    if (!ad) return 'none';
    if (brain.on_advertisement(res.url || page, ad)) await settingsChanged();
    return brain.view().sites.some((s) => s.origin === new URL(page).origin) ? 'offered' : 'none';
  } catch (e) {
    log('looking for the offer of', page, 'failed:', e?.message ?? e);
    return 'unreachable';
  } finally {
    clearTimeout(timer);
  }
}

// Chromium's Local Network Access probe runs on the granted sites only: it is
// registered here rather than in the manifest, where it would need every site.
async function registerLoopbackProbe() {
  if (!api.scripting?.registerContentScripts) return;
  const ids = ['lna-probe'];
  const known = await api.scripting.getRegisteredContentScripts({ ids });
  if (known.length) return;
  await api.scripting.registerContentScripts([{
    id: 'lna-probe', js: ['lna-probe.js'], matches: ['https://*/*', 'http://*/*'], runAt: 'document_start', allFrames: false,
  }]);
}

async function settingsChanged() {
  await api.storage.local.set({ settings: brain.settings() });
  await cookieWatch.check();
  host.sendSettings();
  await applyRules();
}

const host = createHostLink({
  connectNative: () => api.runtime.connectNative(HOST_NAME),
  lastError: () => api.runtime.lastError?.message,
  brain: () => brain,
  applyRules,
  rulesSettled: () => rulesChain,
  settingsChanged,
  hooks: globalThis.peercache,
  log,
  now: () => Date.now(),
  setTimeout: timers.setTimeout,
});
setInterval(() => host.tick(), HOST_POLL_MS);

function onHeaders(details) {
  if (details.incognito) return;
  const header = details.responseHeaders?.find((h) => h.name.toLowerCase() === 'peercache');
  if (!header) return;
  if (!brain) { if (pendingAds.length < 64) pendingAds.push([details.url, header.value]); return; }
  if (brain.on_advertisement(details.url, header.value)) settingsChanged();
}

// Firefox: subresources get their body replaced (see body-replace.js).
if (api.webRequest.filterResponseData) {
  const bodies = createBodyReplacer({
    brain: () => brain,
    filterResponseData: (id) => api.webRequest.filterResponseData(id),
    fetch: (...args) => fetch(...args),
    timers,
    log,
  });
  const filter = { urls: ['https://*/*', 'http://*/*'], types: SUBRESOURCE_TYPES };
  api.webRequest.onBeforeRequest.addListener(bodies.onBeforeRequest, filter, ['blocking']);
  api.webRequest.onBeforeSendHeaders.addListener(bodies.onBeforeSendHeaders, filter, ['blocking', 'requestHeaders']);
  // Blocking, so the verdict is in before the filter's onstart.
  api.webRequest.onHeadersReceived.addListener(bodies.onHeadersReceived, filter, ['blocking', 'responseHeaders']);
}

api.cookies?.onChanged.addListener(cookieWatch.cookieChanged);

// The user grants or takes back a site in the popup or in the browser's own settings.
const accessChanged = async () => { if (await refreshAccess()) await settingsChanged(); };
api.permissions.onAdded.addListener(accessChanged);
api.permissions.onRemoved.addListener(accessChanged);

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
      case 'probe': {
        // The popup got the user's grant for a site: read it, then the site's offer.
        if (await refreshAccess()) await settingsChanged();
        const offer = await probeSite(msg.origin);
        host.post({ type: 'get_status' });
        sendResponse({ ...brain.view(), offer });
        return;
      }
      case 'view': break;
      default: sendResponse({ error: 'unknown command' }); return;
    }
    host.post({ type: 'get_status' });
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
  await refreshAccess();
  await registerLoopbackProbe().catch((e) => log('registering the loopback probe failed:', e?.message ?? e));
  for (const [origin, state] of pendingLoopback) brain.on_loopback(origin, state);
  pendingLoopback = [];
  for (const [url, value] of pendingAds) brain.on_advertisement(url, value);
  pendingAds = [];
  await api.storage.local.set({ settings: brain.settings() });
  await cookieWatch.check();
  await applyRules();
  host.connect();
}).catch((e) => log('wasm failed to start:', e));
