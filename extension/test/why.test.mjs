// The popup's "Why" rows: a host status with recent downloads (a fixture, as the
// host will send it) goes through the real wasm brain, then whyRows picks the
// active tab's site's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { whyRows, whyEmpty, MAX_WHY } from '../why.js';
import { connectedBrain, SITE } from './brain.mjs';

const STATUS = JSON.parse(readFileSync(new URL('./fixtures/status-recent.json', import.meta.url), 'utf8'));

async function view() {
  const brain = await connectedBrain();
  brain.on_host_message(STATUS);
  return brain.view();
}

test("the active tab's site gets its files, newest first, in words", async () => {
  const rows = whyRows(await view(), SITE);
  assert.deepEqual(rows.map((r) => r.title), [
    'a-rather-long-file-name-for-the-popup-2026-release-candidate.webm', 'app.js',
  ]);
  assert.deepEqual(rows.map((r) => r.came), ['peers', 'cache']);
  assert.deepEqual(rows[0].lines, [
    "Came from peers, on the site's referral.",
    "Site's reason: the server cannot send it within the target period and peers hold it (43.1\u00a0s by the site vs 3.0\u00a0s wanted).",
    'Order: peer\u00a09f86d081… 4\u00a0ms → peer\u00a060303ae2… 31\u00a0ms → the site',
    'Bytes: peer\u00a09f86d081… 2.0\u00a0MiB, peer\u00a060303ae2… 1.0\u00a0MiB, the site 512\u00a0B',
  ]);
  assert.deepEqual(rows[1].lines, [
    'Came from your own cache (checked again).',
    "Site's reason: the site was not asked.",
  ]);
  assert.equal(rows[0].url, STATUS.recent[0].url);
});

test('without an active site every file is listed with its site; another site sees only its own', async () => {
  const v = await view();
  const all = whyRows(v, null);
  assert.equal(all.length, 3);
  assert.equal(all[1].title, 'logo.svg (https://other.example)');
  assert.deepEqual(all[1].lines.slice(0, 2), [
    'Came from the site.',
    "Site's reason: the server can send it within the target period (1\u00a0ms by the site vs 2.0\u00a0s wanted).",
  ]);
  assert.deepEqual(whyRows(v, 'https://other.example').map((r) => r.title), ['logo.svg']);
  assert.deepEqual(whyRows(v, 'https://none.example'), []);
});

test('at most MAX_WHY rows, and a view without explanations gives none', async () => {
  const many = { why: Array.from({ length: 9 }, (_, i) => ({ site: SITE, file: `f${i}`, how: 'x', reason: 'y', came: 'server' })) };
  assert.deepEqual(whyRows(many, SITE).map((r) => r.title), ['f0', 'f1', 'f2', 'f3', 'f4'].slice(0, MAX_WHY));
  assert.deepEqual(whyRows({}, SITE), []);
  assert.deepEqual(whyRows(null, null), []);
  assert.notEqual(whyEmpty(SITE), whyEmpty(null));
});
