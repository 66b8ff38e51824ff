import { test } from 'node:test';
import assert from 'node:assert/strict';
import { siteOf } from '../access.js';
import { wasm } from './brain.mjs';

test('a typed address becomes the one-site pattern the brain grants, and the page to look at', async () => {
  const { Brain } = await wasm();
  for (const [typed, pattern, origin] of [
    ['https://Example.org/some/page?x=1', 'https://example.org/*', 'https://example.org'],
    ['example.org', 'https://example.org/*', 'https://example.org'],
    ['http://198.51.100.2:8080/', 'http://198.51.100.2/*', 'http://198.51.100.2:8080'],
    ['https://[2001:db8::1]/', 'https://[2001:db8::1]/*', 'https://[2001:db8::1]'],
  ]) {
    assert.deepEqual(siteOf(typed), { pattern, origin }, typed);
    // The brain reads the grant as covering that origin, and looks at its front page.
    const brain = new Brain(undefined);
    brain.on_advertisement(`${origin}/`, 'scope="/s/"');
    brain.set_host_access([pattern]);
    assert.equal(brain.view().sites[0].access, true, typed);
    assert.equal(brain.view().sites[0].access_pattern, pattern, typed);
    assert.equal(Brain.offer_page(origin), `${origin}/`);
  }
});

test('anything that is not one http(s) site asks for nothing', () => {
  for (const bad of ['', '   ', 'ftp://example.org/', 'https://user:pw@example.org/', 'https://', 'not a url at all',
    'https://*.example.org/', 'javascript:alert(1)', `https://${'a'.repeat(3000)}.org/`, null, undefined]) {
    assert.equal(siteOf(bad), null, String(bad));
  }
});
