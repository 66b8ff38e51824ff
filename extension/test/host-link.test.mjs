// The native host supervision, driven with a fake port, brain and clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  createHostLink, HOST_STALL_MS, HOST_REPLACE_MS, RETRY_FIRST_MS, RETRY_MAX_MS,
} from '../host-link.js';

function fakePort() {
  const port = {
    sent: [], disconnected: false, msgListeners: [], discListeners: [],
    onMessage: { addListener: (f) => port.msgListeners.push(f) },
    onDisconnect: { addListener: (f) => port.discListeners.push(f) },
    postMessage(m) { if (port.disconnected) throw new Error('port closed'); port.sent.push(m); },
    disconnect() { port.disconnected = true; },
    // What the host does:
    say: (m) => Promise.all(port.msgListeners.map((f) => f(m))),
    exit: () => Promise.all(port.discListeners.map((f) => f())),
  };
  return port;
}

function fakeBrain() {
  return {
    calls: [], changedOn: new Set(), direct: new Set(),
    hello() { return { type: 'hello', version: 't' }; },
    config_message() { return { type: 'config' }; },
    limits_message() { return { type: 'limits' }; },
    on_host_message(m) {
      this.calls.push(['msg', m.type]);
      if (m.type === 'bad') throw new Error('unexpected message from host');
      return this.changedOn.has(m.type);
    },
    on_host_disconnected(e) { this.calls.push(['down', e]); return true; },
    is_direct(u) { return this.direct.has(u); },
  };
}

function setup({ failConnects = 0 } = {}) {
  const env = {
    clock: 0, timers: [], ports: [], rules: 0, settings: 0, logs: [], hooks: { ready: false, hostSeen: false },
    brain: fakeBrain(), failConnects, lastError: 'Native host has exited.',
  };
  env.link = createHostLink({
    connectNative: () => {
      if (env.failConnects > 0) { env.failConnects--; throw new Error('Specified native messaging host not found.'); }
      const p = fakePort();
      env.ports.push(p);
      return p;
    },
    lastError: () => env.lastError,
    brain: () => env.brain,
    applyRules: async () => { env.rules++; return true; },
    rulesSettled: async () => {},
    settingsChanged: async () => { env.settings++; },
    hooks: env.hooks,
    log: (...a) => env.logs.push(a.join(' ')),
    now: () => env.clock,
    setTimeout: (fn, ms) => { env.timers.push({ fn, ms }); return env.timers.length; },
  });
  /** Runs the timers scheduled so far (a reconnect), returning their delays. */
  env.runTimers = () => { const due = env.timers.splice(0); due.forEach((t) => t.fn()); return due.map((t) => t.ms); };
  return env;
}

test('says hello, then sends the config and limits once the host answers hello', async () => {
  const env = setup();
  env.link.connect();
  const port = env.ports[0];
  assert.deepEqual(port.sent, [{ type: 'hello', version: 't' }]);
  await port.say({ type: 'hello', version: '1' });
  assert.deepEqual(port.sent.slice(1), [{ type: 'config' }, { type: 'limits' }]);
  assert.equal(env.hooks.ready, false, 'ready only after a status');
  env.brain.changedOn.add('status');
  await port.say({ type: 'status' });
  assert.equal(env.rules, 1, 'a status that changes the gateway reapplies the rules');
  assert.equal(env.hooks.hostSeen, true);
  assert.equal(env.hooks.ready, true);
  env.link.connect();
  assert.equal(env.ports.length, 1, 'connect while connected opens nothing');
});

test('a host that exits: rules come down, ready anyway, reconnects with doubling backoff up to 30 s, reset by hello', async () => {
  const env = setup();
  env.link.connect();
  await env.ports[0].exit();
  assert.deepEqual(env.brain.calls.at(-1), ['down', 'Native host has exited.']);
  assert.equal(env.rules, 1);
  assert.equal(env.hooks.ready, true, 'pages keep working without the host');
  assert.equal(env.link.connected, false);
  const delays = [];
  for (let i = 0; i < 7; i++) {
    delays.push(...env.runTimers());
    await env.ports.at(-1).exit();
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  assert.equal(env.ports.length, 8);
  env.runTimers();
  await env.ports.at(-1).say({ type: 'hello', version: '1' });
  assert.equal(env.link.retryMs, RETRY_FIRST_MS, 'a hello resets the backoff');
  assert.ok(RETRY_MAX_MS === 30000);
});

test('a missing host (connectNative throws) is retried with backoff too', () => {
  const env = setup({ failConnects: 2 });
  env.link.connect();
  assert.deepEqual(env.brain.calls, [['down', 'Specified native messaging host not found.']]);
  assert.deepEqual(env.runTimers(), [1000]);
  assert.deepEqual(env.runTimers(), [2000]);
  assert.equal(env.ports.length, 1, 'the third try connects');
  assert.equal(env.link.connected, true);
});

test('a silent host: status every tick, rules down after 6 s, replaced after 30 s, and an answer clears the stall', async () => {
  const env = setup();
  env.link.connect();
  const first = env.ports[0];
  env.clock = HOST_STALL_MS;
  await env.link.tick();
  assert.deepEqual(first.sent.at(-1), { type: 'get_status' });
  assert.equal(env.rules, 0, 'exactly 6 s is not yet silent');
  env.clock = HOST_STALL_MS + 1;
  await env.link.tick();
  assert.deepEqual(env.brain.calls.at(-1), ['down', 'the native host stopped answering']);
  assert.equal(env.rules, 1);
  env.clock += 2000;
  await env.link.tick();
  assert.equal(env.rules, 1, 'the stall is reported once');
  // It answers: the next silence counts from then.
  await first.say({ type: 'status' });
  env.clock += HOST_STALL_MS + 1;
  await env.link.tick();
  assert.equal(env.rules, 2, 'a new stall after an answer is reported again');
  env.clock += HOST_REPLACE_MS;
  await env.link.tick();
  assert.equal(first.disconnected, true, 'the hung host is let go');
  assert.deepEqual(env.runTimers(), [0], 'and a fresh one started at once');
  assert.equal(env.ports.length, 2);
  // The old port's late words and exit change nothing.
  const before = env.brain.calls.length;
  await first.say({ type: 'status' });
  await first.exit();
  assert.equal(env.brain.calls.length, before);
  assert.equal(env.link.connected, true);
});

test('not_shareable: settings saved, rules applied, then direct_ready only for a URL now sent to the site', async () => {
  const env = setup();
  env.link.connect();
  const port = env.ports[0];
  env.brain.changedOn.add('not_shareable');
  env.brain.direct.add('https://s.example/static/a.js');
  await port.say({ type: 'not_shareable', url: 'https://s.example/static/a.js', reason: 'Set-Cookie' });
  assert.equal(env.settings, 1);
  assert.equal(env.rules, 1);
  assert.deepEqual(port.sent.at(-1), { type: 'direct_ready', url: 'https://s.example/static/a.js' });
  const sent = port.sent.length;
  await port.say({ type: 'not_shareable', url: 'https://s.example/static/b.js', reason: 'private' });
  assert.equal(port.sent.length, sent, 'no direct_ready for a URL the brain does not send to the site');
});

test('a message the brain cannot read is logged and ignored', async () => {
  const env = setup();
  env.link.connect();
  await env.ports[0].say({ type: 'bad' });
  assert.equal(env.rules, 0);
  assert.match(env.logs.join('\n'), /unexpected message/);
});
