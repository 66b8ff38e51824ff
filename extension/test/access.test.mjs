import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sitePattern } from '../access.js';
import { wasm } from './brain.mjs';

test('a typed address becomes the one-site pattern the brain reads back', async () => {
  const { Brain } = await wasm();
  for (const [typed, pattern] of [
    ['https://Example.org/some/page?x=1', 'https://example.org/*'],
    ['example.org', 'https://example.org/*'],
    ['http://198.51.100.2:8080/', 'http://198.51.100.2/*'],
    ['https://[2001:db8::1]/', 'https://[2001:db8::1]/*'],
  ]) {
    assert.equal(sitePattern(typed), pattern, typed);
    // The brain finds the same site in it (the page it looks at for the offer).
    assert.equal(Brain.site_of_pattern(pattern), pattern.slice(0, -1));
  }
});

test('anything that is not one http(s) site asks for nothing', () => {
  for (const bad of ['', '   ', 'ftp://example.org/', 'https://user:pw@example.org/', 'https://', 'not a url at all',
    'https://*.example.org/', 'javascript:alert(1)', `https://${'a'.repeat(3000)}.org/`, null, undefined]) {
    assert.equal(sitePattern(bad), null, String(bad));
  }
});
