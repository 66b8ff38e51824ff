// The cookie store check, with a fake store, against the real wasm brain (which
// cookies bind a scope is Rust's rule).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCookieWatch, COOKIE_BATCH_MS } from '../cookie-watch.js';
import { connectedBrain, SITE } from './brain.mjs';

const URL_A = `${SITE}/static/a.bin`;

async function setup(store) {
  const env = { rules: 0, timers: [], asked: [], logs: [], brain: await connectedBrain() };
  env.watch = createCookieWatch({
    cookies: {
      getAll: async (q) => {
        env.asked.push(q);
        if (store.fail) throw new Error('store unavailable');
        return q.url ? (store.atRoot ?? []) : (store.forHost ?? []);
      },
    },
    brain: () => env.brain,
    applyRules: async () => { env.rules++; return true; },
    setTimeout: (fn, ms) => { env.timers.push({ fn, ms }); return env.timers.length; },
    log: (...a) => env.logs.push(a.join(' ')),
  });
  env.bound = () => env.brain.view().sites.find((s) => s.origin === SITE).cookies;
  return env;
}

test('no cookie for the scope: intercepted, nothing to reapply', async () => {
  const env = await setup({ forHost: [{ domain: 's.example', path: '/app/', hostOnly: true, value: 'x' }] });
  await env.watch.check();
  assert.deepEqual(env.asked, [{ url: `${SITE}/static/` }, { domain: 's.example' }]);
  assert.equal(env.bound(), false);
  assert.equal(env.rules, 0);
  assert.ok(env.brain.gateway_for(URL_A), 'still through the gateway');
});

for (const [what, store] of [
  ['a cookie sent to the scope root', { atRoot: [{ name: 'sid' }] }],
  ['a cookie deeper inside the scope', { forHost: [{ domain: 's.example', path: '/static/img/', hostOnly: true }] }],
  ['a domain cookie deeper inside the scope', { forHost: [{ domain: '.s.example', path: '/static/x/', hostOnly: false }] }],
  ['a store that cannot be read', { fail: true }],
]) {
  test(`${what}: the site is not intercepted`, async () => {
    const env = await setup(store);
    await env.watch.check();
    assert.equal(env.bound(), true);
    assert.equal(env.rules, 1, 'the rules are reapplied');
    assert.equal(env.brain.gateway_for(URL_A), null, 'the brain no longer sends it to the gateway');
  });
}

test('changes are batched per host, and only the sites they touch are checked', async () => {
  const store = {};
  const env = await setup(store);
  env.watch.cookieChanged({ cookie: { domain: 'other.example' } });
  env.watch.cookieChanged({ cookie: {} });
  assert.equal(env.timers.length, 0, 'a cookie of another site checks nothing');
  store.atRoot = [{ name: 'sid' }];
  env.watch.cookieChanged({ cookie: { domain: '.s.example' } });
  env.watch.cookieChanged({ cookie: { domain: 's.example' } });
  assert.equal(env.timers.length, 1, 'one check for a burst of changes');
  assert.equal(env.timers[0].ms, COOKIE_BATCH_MS);
  env.timers[0].fn();
  await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(env.asked, [{ url: `${SITE}/static/` }, { domain: 's.example' }]);
  assert.equal(env.bound(), true);
  env.watch.cookieChanged({ cookie: { domain: 's.example' } });
  assert.equal(env.timers.length, 2, 'a later change schedules a new check');
});
