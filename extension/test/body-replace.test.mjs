// The Firefox body replacement state machine, driven with a fake filter and
// fetch, against the real wasm brain (its scope and request rules are Rust's).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createBodyReplacer, SUBRESOURCE_TYPES } from '../body-replace.js';
import { connectedBrain, SITE, wasm } from './brain.mjs';

const URL_A = `${SITE}/static/a.bin`;
const BODY = Buffer.from(Array.from({ length: 70000 }, (_, i) => (i * 7 + (i >> 8)) & 0xff));
const HEADERS_ONLY = [{ name: 'Peercache-Headers-Only', value: '1' }, { name: 'ETag', value: '"h1"' }];

/** A body stream: `chunks` (Buffers), then `end`: 'done' | 'error' | 'hang'. */
function stream(chunks, end = 'done') {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) { controller.enqueue(new Uint8Array(chunks[i++])); return undefined; }
      if (end === 'done') { controller.close(); return undefined; }
      if (end === 'error') { controller.error(new Error('connection reset')); return undefined; }
      return new Promise(() => {}); // hangs
    },
  });
}
const split = (buf, at) => [buf.subarray(0, at), buf.subarray(at)];

async function setup({ gateway, site } = {}) {
  const env = { fetches: [], logs: [], filters: [], brain: await connectedBrain() };
  env.replacer = createBodyReplacer({
    brain: () => env.brain,
    filterResponseData: (id) => {
      const f = { id, out: [], closed: false };
      f.write = (d) => { if (f.closed) throw new Error('closed'); f.out.push(Buffer.from(d)); };
      f.close = () => { f.closed = true; };
      f.body = () => Buffer.concat(f.out);
      env.filters.push(f);
      return f;
    },
    fetch: async (url, init) => {
      env.fetches.push({ url, init });
      const answer = url.startsWith('http://127.0.0.1:') ? gateway : site;
      if (!answer) throw new Error(`unexpected fetch ${url}`);
      return answer(init);
    },
    timers: { setTimeout, clearTimeout },
    log: (...a) => env.logs.push(a.join(' ')),
    firstByteMs: 40,
    stallMs: 40,
  });
  return env;
}

const details = (extra = {}) => ({ requestId: 'r1', url: URL_A, method: 'GET', tabId: 4, incognito: false, ...extra });

/** A request through the three webRequest events, then the filter's start. */
async function request(env, { requestHeaders = [{ name: 'Accept', value: '*/*' }], responseHeaders = HEADERS_ONLY, original } = {}) {
  env.replacer.onBeforeRequest(details());
  const filter = env.filters.at(-1);
  const sent = env.replacer.onBeforeSendHeaders(details({ requestHeaders }));
  env.replacer.onHeadersReceived(details({ responseHeaders }));
  await filter.onstart();
  if (original) {
    for (const data of original) filter.ondata({ data });
    filter.onstop();
  }
  return { filter, sent };
}

test('through peers: the server is asked for headers only, the body is the gateway\'s, the token goes in a header', async () => {
  const env = await setup({ gateway: () => new Response(stream(split(BODY, 30000))) });
  const { filter, sent } = await request(env);
  assert.deepEqual(sent.requestHeaders.at(-1), { name: 'Peercache-Headers-Only', value: '1' });
  assert.equal(env.fetches.length, 1);
  assert.equal(env.fetches[0].url, `http://127.0.0.1:4242/g/${URL_A}`);
  assert.equal(env.fetches[0].init.headers['x-peercache-token'], 'tok');
  assert.ok(filter.body().equals(BODY));
  assert.equal(filter.closed, true);
  assert.equal(env.replacer.inFlight, 0);
});

for (const [what, header] of [
  ['a cookie', { name: 'Cookie', value: 'sid=1' }],
  ['authorization', { name: 'AUTHORIZATION', value: 'Basic eA==' }],
  ['a Range', { name: 'range', value: 'bytes=0-99' }],
]) {
  test(`a request with ${what} keeps its own body and the gateway is never asked (the brain's rule)`, async () => {
    const env = await setup({ gateway: () => assert.fail('the gateway must not be asked') });
    const own = split(BODY, 1000);
    const { filter, sent } = await request(env, {
      requestHeaders: [{ name: 'Accept', value: '*/*' }, header],
      responseHeaders: [{ name: 'Content-Type', value: 'application/octet-stream' }],
      original: own,
    });
    assert.deepEqual(sent, {}, 'no headers-only request');
    assert.equal(env.fetches.length, 0);
    assert.ok(filter.body().equals(BODY), 'the original body passes through');
    assert.equal(filter.closed, true);
    assert.equal(env.replacer.inFlight, 0);
  });
}

test('an answer that is not headers-only (Set-Cookie, private) keeps its body and cancels the gateway fetch', async () => {
  let signal;
  const env = await setup({ gateway: (init) => { signal = init.signal; return new Promise(() => {}); } });
  const { filter } = await request(env, {
    responseHeaders: [{ name: 'Set-Cookie', value: 's=1' }], original: [BODY],
  });
  assert.equal(signal.aborted, true);
  assert.ok(filter.body().equals(BODY));
});

test('the gateway fails mid-body: the rest comes from the site with Range and If-Range, byte-identical', async () => {
  const [head, rest] = split(BODY, 25000);
  const env = await setup({
    gateway: () => new Response(stream([head], 'error')),
    site: () => new Response(stream([rest]), { status: 206 }),
  });
  const { filter } = await request(env);
  const siteFetch = env.fetches[1];
  assert.equal(siteFetch.url, URL_A);
  assert.deepEqual(siteFetch.init.headers, { Range: 'bytes=25000-', 'If-Range': '"h1"' });
  assert.equal(siteFetch.init.credentials, 'omit');
  assert.ok(filter.body().equals(BODY));
  assert.match(env.logs.join('\n'), /the rest comes from the site/);
});

test('a gateway silent after the first bytes is given up after the stall time; the site fills in', async () => {
  let signal;
  const [head, rest] = split(BODY, 10);
  const env = await setup({
    gateway: (init) => { signal = init.signal; return new Response(stream([head], 'hang')); },
    site: () => new Response(stream([rest]), { status: 206 }),
  });
  const { filter } = await request(env);
  assert.equal(signal.aborted, true, 'the gateway fetch is cancelled');
  assert.match(env.logs.join('\n'), /silent for 40 ms/);
  assert.ok(filter.body().equals(BODY));
});

test('a gateway with no first byte: the whole body comes from the site, without Range', async () => {
  const env = await setup({
    gateway: () => new Promise(() => {}),
    site: () => new Response(stream([BODY]), { status: 200 }),
  });
  const { filter } = await request(env);
  assert.deepEqual(env.fetches[1].init.headers, {});
  assert.ok(filter.body().equals(BODY));
});

test('a site that ignores Range sends everything: what was written is skipped', async () => {
  const [head] = split(BODY, 33333);
  const env = await setup({
    gateway: () => new Response(stream([head], 'error')),
    site: () => new Response(stream(split(BODY, 20000)), { status: 200 }),
  });
  const { filter } = await request(env, { responseHeaders: [{ name: 'Peercache-Headers-Only', value: '1' }] });
  assert.equal(env.fetches[1].init.headers['If-Range'], undefined, 'no ETag, no If-Range');
  assert.ok(filter.body().equals(BODY));
});

test('a file that changed on the site mid-way is not spliced', async () => {
  const [head] = split(BODY, 5000);
  const env = await setup({
    gateway: () => new Response(stream([head], 'error')),
    site: () => new Response(stream([Buffer.from('other version')]), { status: 200 }),
  });
  const { filter } = await request(env);
  assert.ok(filter.body().equals(head), 'only the verified bytes, nothing of another version');
  assert.equal(filter.closed, true);
  assert.match(env.logs.join('\n'), /changed on the site/);
});

test('a redirect hop leaves the original body alone; a failed request forgets its entry', async () => {
  let signal;
  const env = await setup({ gateway: (init) => { signal = init.signal; return new Promise(() => {}); } });
  env.replacer.onBeforeRequest(details());
  env.replacer.onBeforeSendHeaders(details({ requestHeaders: [] }));
  env.replacer.onHeadersReceived(details({ url: `${SITE}/static/moved.bin`, responseHeaders: HEADERS_ONLY }));
  assert.equal(signal.aborted, true);
  const filter = env.filters[0];
  await filter.onstart();
  filter.ondata({ data: BODY });
  assert.ok(filter.body().equals(BODY));
  filter.onerror();
  assert.equal(env.replacer.inFlight, 0);
});

test('only GET requests of pages, in an enabled scope, outside private windows, are taken over', async () => {
  const env = await setup({});
  env.replacer.onBeforeRequest(details({ method: 'POST' }));
  env.replacer.onBeforeRequest(details({ tabId: -1 }));
  env.replacer.onBeforeRequest(details({ incognito: true }));
  env.replacer.onBeforeRequest(details({ url: `${SITE}/app/x.js` }));
  env.replacer.onBeforeRequest(details({ url: 'https://other.example/static/a.bin' }));
  assert.equal(env.filters.length, 0);
  env.brain.on_host_disconnected('gone');
  env.replacer.onBeforeRequest(details());
  assert.equal(env.filters.length, 0, 'no host, no gateway');
});

test("the listeners' request types are the Rust rule's (the copy the background needs before the wasm loads)", async () => {
  const { subresource_types: rule } = await wasm();
  assert.deepEqual([...SUBRESOURCE_TYPES], rule());
});
