// Writes the per-browser manifest from the one root manifest.json.
// Chromium: no gecko settings, a service worker only. Firefox: no `key`, a
// background script (Firefox MV3 does not run extension service workers).
// Firefox also gets the blocking webRequest permissions its subresource path uses.
import { readFileSync } from 'node:fs';

const [browser, path] = process.argv.slice(2);
const m = JSON.parse(readFileSync(path, 'utf8'));
if (browser === 'chromium') {
  delete m.browser_specific_settings;
  delete m.background.scripts;
} else if (browser === 'firefox') {
  delete m.key;
  delete m.background.service_worker;
  // Firefox reads managed storage from policies.json or a native manifest, not a schema.
  delete m.storage;
  // Subresources go through filterResponseData on the original request.
  m.permissions.push('webRequestBlocking', 'webRequestFilterResponse');
  // Lets tests (and users) open the popup as a page.
  m.web_accessible_resources = [{ resources: ['popup.html'], matches: ['<all_urls>'] }];
} else {
  console.error(`unknown browser ${browser}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(m, null, 2) + '\n');
