// The connection to the native host, supervised: connect, reconnect with backoff,
// a status request every 2 s, the rules taken down after 6 s of silence, a host
// silent for 30 s replaced. What a message means is the brain's to say
// (wasm/src/lib.rs); this module only keeps the port alive. Browser APIs and
// timers come in as arguments so node tests can drive it (extension/test/).

export const HOST_NAME = 'org.peercache.host';
export const RETRY_FIRST_MS = 1000;
export const RETRY_MAX_MS = 30000;
export const HOST_POLL_MS = 2000;
export const HOST_STALL_MS = 6000;
export const HOST_REPLACE_MS = 30000;

/**
 * @param {object} deps
 * @param {() => object} deps.connectNative opens a port to the host (may throw)
 * @param {() => (string|undefined)} deps.lastError the browser's reason for the last disconnect
 * @param {() => object|null} deps.brain the wasm Brain, once loaded
 * @param {() => Promise<boolean>} deps.applyRules puts the brain's rules in force
 * @param {() => Promise<unknown>} deps.rulesSettled resolves when queued rule updates are done
 * @param {() => Promise<unknown>} deps.settingsChanged persists settings and tells the host
 * @param {object} deps.hooks the test hook object: `hostSeen` and `ready` are set on it
 * @param {(...args: unknown[]) => void} deps.log
 * @param {() => number} deps.now
 * @param {(fn: () => void, ms: number) => unknown} deps.setTimeout
 */
export function createHostLink(deps) {
  let port = null;
  let retryMs = RETRY_FIRST_MS;
  let lastHeard = deps.now();
  let stalled = false;

  /** Sends `msg` to the host if connected; false if there is no port or it failed. */
  function post(msg) {
    if (!port) return false;
    try {
      port.postMessage(msg);
      return true;
    } catch (e) {
      deps.log('post failed:', e?.message ?? e);
      return false;
    }
  }

  /** The config and limits the host needs, after a hello or a settings change. */
  function sendSettings() {
    const brain = deps.brain();
    if (!brain) return;
    post(brain.config_message());
    post(brain.limits_message());
  }

  /** The next try in `retryMs`, each one waiting twice as long, up to 30 s. */
  function retryLater() {
    deps.setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
  }

  async function onMessage(from, msg) {
    if (from !== port) return; // a replaced host's last words
    const brain = deps.brain();
    lastHeard = deps.now();
    stalled = false;
    let changed = false;
    try { changed = brain.on_host_message(msg); } catch (e) { deps.log(e?.message ?? e); return; }
    if (msg.type === 'hello') {
      retryMs = RETRY_FIRST_MS;
      sendSettings();
    }
    if (msg.type === 'not_shareable') {
      // The site answered with a cookie or a private response: from now on this
      // URL goes to the site itself (remembered across restarts). Once the rule is
      // in force, the gateway may send the waiting request there too.
      deps.log('not shareable, fetched from the site from now on:', msg.url, msg.reason);
      if (changed) await deps.settingsChanged();
      // Rules computed now include the allow rule; answer only once they are in force.
      const inForce = await deps.applyRules();
      if (inForce && brain.is_direct(String(msg.url))) post({ type: 'direct_ready', url: msg.url });
      return;
    }
    if (changed) await deps.applyRules();
    if (msg.type === 'status') {
      deps.hooks.hostSeen = true;
      await deps.rulesSettled();
      deps.hooks.ready = true;
    }
  }

  async function onDisconnect(from) {
    if (from !== port) return;
    const error = deps.lastError() ?? 'native host disconnected';
    deps.log('host disconnected:', error);
    port = null;
    deps.brain().on_host_disconnected(error);
    await deps.applyRules();
    // The page keeps working without the host; reconnect with backoff.
    deps.hooks.ready = true;
    retryLater();
  }

  /** Opens the port and says hello; on failure tries again later. */
  function connect() {
    const brain = deps.brain();
    if (!brain || port) return;
    let p;
    try {
      p = deps.connectNative();
    } catch (e) {
      brain.on_host_disconnected(String(e?.message ?? e));
      retryLater();
      return;
    }
    port = p;
    p.onMessage.addListener((msg) => onMessage(p, msg));
    p.onDisconnect.addListener(() => onDisconnect(p));
    lastHeard = deps.now();
    stalled = false;
    post(brain.hello());
  }

  /**
   * Every HOST_POLL_MS: asks for a status. A host that hangs (stopped, swapping,
   * deadlocked) keeps its port open, so the browser reports nothing: after 6 s
   * of silence the rules come down so pages load from the sites (the next answer
   * brings the gateway, and the rules, back); after 30 s a fresh host is started.
   */
  async function tick() {
    const brain = deps.brain();
    if (!port || !brain) return;
    if (!post({ type: 'get_status' })) return;
    const silentFor = deps.now() - lastHeard;
    if (!stalled && silentFor > HOST_STALL_MS) {
      stalled = true;
      deps.log('the native host stopped answering; pages load from the sites until it does');
      brain.on_host_disconnected('the native host stopped answering');
      await deps.applyRules();
    }
    if (silentFor > HOST_REPLACE_MS && port) {
      // Still hung: let it go and start a fresh one (disconnect() does not fire our
      // own onDisconnect).
      deps.log('replacing the hung native host');
      try { port.disconnect(); } catch (_) { /* gone */ }
      port = null;
      deps.setTimeout(connect, 0);
    }
  }

  return {
    connect,
    tick,
    post,
    sendSettings,
    get connected() { return port !== null; },
    get retryMs() { return retryMs; },
  };
}
