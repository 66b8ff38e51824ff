// Firefox: subresources of enabled sites are not redirected (Local Network Access
// would prompt); instead the background replaces the ORIGINAL response's body with
// verified bytes from the gateway (filterResponseData), and asks the server for
// headers only, so no byte travels twice. Status and content type stay the
// server's, as the page sees them.
// A request the brain refuses (cookies, authorization, a Range: the rule is
// Rust's, `Brain.subresource_refusal`), or whose answer is not the server's
// headers-only reply (a Set-Cookie or private response is always sent whole),
// keeps its own body untouched and the gateway fetch is cancelled.
// When the gateway fails or goes silent, the rest of the body comes from the site
// itself, a Range request from the first byte not yet written, so the page never
// gets a short or empty body.
//
// Browser APIs, fetch and timers come in as arguments so node tests can drive
// every path (extension/test/body-replace.test.mjs).

export const SUBRESOURCE_TYPES = ['image', 'script', 'stylesheet', 'media', 'font', 'xmlhttprequest'];
export const GATEWAY_FIRST_BYTE_MS = 5000;
export const GATEWAY_STALL_MS = 10000;
/** Most requests handled at once; past it, requests keep their own body. */
export const MAX_IN_FLIGHT = 1000;

const header = (list, name) => (list ?? []).find((h) => h.name.toLowerCase() === name);

/** Reads `promise` or gives up after `ms`, aborting `abort`. */
export function withDeadline(promise, ms, abort, timers) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = timers.setTimeout(() => {
        abort.abort();
        reject(new Error(`the gateway was silent for ${ms} ms`));
      }, ms);
    }),
  ]).finally(() => timers.clearTimeout(timer));
}

/**
 * Writes the body of `url` from byte `offset` on into `filter`, fetched from the
 * site. With an ETag (the server's is the object's hash) only the rest of the
 * same version is spliced in (If-Range); a site that ignores Range sends all of
 * it and what was written already is skipped. Throws if the site cannot help.
 */
export async function restFromSite({ url, offset, etag, filter, isFailed, fetch }) {
  const headers = {};
  if (offset > 0) {
    headers.Range = `bytes=${offset}-`;
    if (etag) headers['If-Range'] = etag;
  }
  const resp = await fetch(url, { headers, cache: 'no-store', credentials: 'omit' });
  if (resp.status !== 200 && resp.status !== 206) throw new Error(`the site answered ${resp.status}`);
  if (offset > 0 && resp.status === 200 && etag) {
    // The file changed since the bytes already written: they cannot be spliced.
    resp.body?.cancel();
    throw new Error('the file changed on the site mid-way');
  }
  let skip = resp.status === 200 ? offset : 0;
  const reader = resp.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    if (isFailed()) { reader.cancel(); return; }
    if (skip >= value.byteLength) { skip -= value.byteLength; continue; }
    filter.write(skip ? value.subarray(skip) : value);
    skip = 0;
  }
}

/**
 * @param {object} deps
 * @param {() => object|null} deps.brain the wasm Brain (`gateway_for`, `subresource_refusal`)
 * @param {(requestId: string) => object} deps.filterResponseData webRequest.filterResponseData
 * @param {typeof fetch} deps.fetch
 * @param {{setTimeout: Function, clearTimeout: Function}} deps.timers
 * @param {(...args: unknown[]) => void} deps.log
 * @param {number} [deps.firstByteMs] @param {number} [deps.stallMs]
 */
export function createBodyReplacer(deps) {
  const firstByteMs = deps.firstByteMs ?? GATEWAY_FIRST_BYTE_MS;
  const stallMs = deps.stallMs ?? GATEWAY_STALL_MS;
  // requestId → { url, target, mode: 'pending' | 'peers' | 'original', abort, body, etag, failed }
  const replaced = new Map();

  /** The entry for this request if it is still undecided and this is its first hop. */
  function pending(details) {
    const entry = replaced.get(details.requestId);
    return entry && entry.mode === 'pending' && entry.url === details.url ? entry : null;
  }

  function leaveAlone(entry) {
    entry.mode = 'original';
    entry.abort.abort();
  }

  /** onBeforeRequest (blocking): takes over the body of a request the gateway can serve. */
  function onBeforeRequest(details) {
    const brain = deps.brain();
    // tabId -1: the background's own requests (restFromSite), never replaced.
    if (!brain || details.incognito || details.tabId === -1) return {};
    // The method alone (no headers yet): the same rule as below, from the brain.
    if (brain.subresource_refusal(details.method, [])) return {};
    if (replaced.size >= MAX_IN_FLIGHT) return {};
    if (replaced.has(details.requestId)) return {}; // a redirect hop of a request already handled
    const target = brain.gateway_for(details.url);
    if (!target) return {};
    const filter = deps.filterResponseData(details.requestId);
    const entry = {
      url: details.url, target, mode: 'pending', abort: new AbortController(), body: null, etag: null, failed: false,
    };
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
        leaveAlone(entry);
        return;
      }
      let written = 0;
      try {
        const resp = await withDeadline(entry.body, firstByteMs, entry.abort, deps.timers);
        if (!resp.ok) throw new Error(`gateway ${resp.status}`);
        const reader = resp.body.getReader();
        for (;;) {
          const { done: end, value } = await withDeadline(reader.read(), stallMs, entry.abort, deps.timers);
          if (end) break;
          filter.write(value);
          written += value.byteLength;
        }
      } catch (e) {
        if (!entry.failed) {
          deps.log('subresource through peers failed, the rest comes from the site:', e?.message ?? e);
          try {
            await restFromSite({
              url: entry.url, offset: written, etag: entry.etag, filter, isFailed: () => entry.failed, fetch: deps.fetch,
            });
          } catch (e2) {
            deps.log('and from the site too:', e2?.message ?? e2);
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

  /** onBeforeSendHeaders (blocking): asks the server for headers only, and the gateway for the body. */
  function onBeforeSendHeaders(details) {
    const entry = pending(details);
    if (!entry) return {};
    // Cookies or authorization: never through peers (B2), so the gateway is not
    // even asked. A Range request (media): the site answers the part asked for.
    const brain = deps.brain();
    const refusal = brain ? brain.subresource_refusal(details.method, details.requestHeaders ?? []) : 'no brain';
    if (refusal) {
      leaveAlone(entry);
      return {};
    }
    entry.body = deps.fetch(entry.target.url, {
      headers: { 'x-peercache-token': entry.target.token }, cache: 'no-store', signal: entry.abort.signal,
    });
    entry.body.catch(() => {}); // cancelled, or reported in onstart
    const requestHeaders = [...(details.requestHeaders ?? []), { name: 'Peercache-Headers-Only', value: '1' }];
    return { requestHeaders };
  }

  /** onHeadersReceived (blocking, so the verdict is in before the filter's onstart). */
  function onHeadersReceived(details) {
    const entry = pending(details);
    if (!entry) {
      // A redirect hop, or a request left alone: the original body stays.
      const other = replaced.get(details.requestId);
      if (other && other.mode === 'pending') leaveAlone(other);
      return {};
    }
    const headersOnly = !!header(details.responseHeaders, 'peercache-headers-only');
    entry.etag = header(details.responseHeaders, 'etag')?.value ?? null;
    if (headersOnly && entry.body) entry.mode = 'peers';
    else leaveAlone(entry);
    return {};
  }

  return {
    onBeforeRequest,
    onBeforeSendHeaders,
    onHeadersReceived,
    /** Requests being handled now (for tests and the cap). */
    get inFlight() { return replaced.size; },
  };
}
