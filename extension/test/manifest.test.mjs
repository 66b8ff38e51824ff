// The packages' permissions (issue 15): the store packages ask for each site the
// user allows and hold only the local gateway up front; nothing runs on every site.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
const manifest = (target) => JSON.parse(execFileSync('node', [join(ROOT, 'scripts/package-manifest.mjs'), target, join(ROOT, 'manifest.json')]).toString());

test('the store packages hold no site up front and ask for each one', () => {
  for (const target of ['chromium-store', 'firefox']) {
    const m = manifest(target);
    assert.deepEqual(m.host_permissions, ['http://127.0.0.1/*'], `${target}: only the local gateway`);
    assert.deepEqual(m.optional_host_permissions, ['https://*/*', 'http://*/*'], target);
    assert.equal(m.content_scripts, undefined, `${target}: no content script on every site`);
    assert.ok(!JSON.stringify(m.permissions).includes('<all_urls>'), target);
    assert.ok(m.permissions.includes('scripting') && m.permissions.includes('activeTab'), target);
  }
  assert.equal(manifest('chromium-store').key, undefined, 'the Chrome Web Store refuses a key');
});

test('only the development build for Chromium is granted every site at load', () => {
  const m = manifest('chromium');
  assert.ok(m.key, 'the development id');
  assert.deepEqual(m.host_permissions, ['http://127.0.0.1/*', 'https://*/*', 'http://*/*']);
});
