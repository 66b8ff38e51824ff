// A site whose scope would receive cookies is not intercepted at all (B2): the
// redirect rules cannot see a request's headers, so the cookie store is asked.
// Which cookies bind a scope, and which sites a changed cookie touches, is the
// brain's rule (`Brain.on_cookie_store`, `Brain.cookie_hosts`); this module only
// reads the store and batches changes. Browser APIs and timers come in as
// arguments so node tests can drive it (extension/test/cookie-watch.test.mjs).

export const COOKIE_BATCH_MS = 100;

/**
 * @param {object} deps
 * @param {object|undefined} deps.cookies the browser's `cookies` API (absent: nothing to do)
 * @param {() => object|null} deps.brain the wasm Brain
 * @param {() => Promise<boolean>} deps.applyRules
 * @param {(fn: () => void, ms: number) => unknown} deps.setTimeout
 * @param {(...args: unknown[]) => void} deps.log
 */
export function createCookieWatch(deps) {
  const changedHosts = new Set(); // hosts whose cookies changed since the last check
  let timer = null;

  /** Re-reads the cookie state of every known site, or only of sites on `hosts`. */
  async function check(hosts = null) {
    const brain = deps.brain();
    if (!deps.cookies || !brain) return;
    let changed = false;
    const sites = (brain.view()?.sites ?? [])
      .filter((site) => !hosts || hosts.has(new URL(site.origin).hostname));
    for (const site of sites) {
      try {
        // Cookies sent to the scope root, and every cookie of the host (the brain
        // picks those inside the scope that are sent to this host).
        const atRoot = await deps.cookies.getAll({ url: `${site.origin}${site.scope}` });
        const forHost = await deps.cookies.getAll({ domain: new URL(site.origin).hostname });
        const listed = forHost.map((c) => ({ domain: c.domain, path: c.path, hostOnly: !!c.hostOnly }));
        if (brain.on_cookie_store(site.origin, atRoot.length, listed)) changed = true;
      } catch (e) {
        // The store cannot be read: assume cookies, never intercept blind.
        deps.log('reading cookies failed; not intercepting', site.origin, e?.message ?? e);
        if (brain.on_cookies(site.origin, true)) changed = true;
      }
    }
    if (changed) await deps.applyRules();
  }

  /**
   * cookies.onChanged: pages change cookies all the time, so only sites on the
   * changed cookie's host (or under a parent domain's cookie) are checked again,
   * at most every 100 ms.
   */
  function cookieChanged(change) {
    const brain = deps.brain();
    const domain = String(change?.cookie?.domain ?? '');
    if (!brain || !domain) return;
    for (const host of brain.cookie_hosts(domain)) changedHosts.add(host);
    if (changedHosts.size === 0 || timer) return;
    timer = deps.setTimeout(() => {
      const hosts = new Set(changedHosts);
      changedHosts.clear();
      timer = null;
      check(hosts);
    }, COOKIE_BATCH_MS);
  }

  return { check, cookieChanged };
}
