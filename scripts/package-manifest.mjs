// Writes the per-browser manifest from the one root manifest.json.
//   node package-manifest.mjs chromium|chromium-store|firefox manifest.json
// Chromium: no gecko settings, a service worker only; `chromium` keeps the
// `key` (fixes the development id an unpacked load gets), `chromium-store` has
// none (the Chrome Web Store refuses it and assigns the id itself).
// Sites: every package asks for each site the user allows (optional host
// permissions) but the development one, `chromium`, which is granted every site
// at load: Chromium gives automation no way to answer its permission prompt, so
// the tests that drive it need the grant made up front (Firefox's tests answer
// the prompt through a preference and take the per-site path).
// Firefox: no `key`, a background script (Firefox MV3 does not run extension
// service workers), the blocking webRequest permissions its subresource path
// uses, and the data collection declaration new add-ons must make.
import { readFileSync } from 'node:fs';

const [browser, path] = process.argv.slice(2);
const m = JSON.parse(readFileSync(path, 'utf8'));
if (browser === 'chromium' || browser === 'chromium-store') {
  delete m.browser_specific_settings;
  delete m.background.scripts;
  if (browser === 'chromium-store') delete m.key;
  else m.host_permissions = [...m.host_permissions, ...m.optional_host_permissions];
} else if (browser === 'firefox') {
  delete m.key;
  delete m.background.service_worker;
  // Firefox reads managed storage from policies.json or a native manifest, not a schema.
  delete m.storage;
  // Subresources go through filterResponseData on the original request.
  m.permissions.push('webRequestBlocking', 'webRequestFilterResponse');
  // What leaves the browser: for the files of sites the user switched on, the
  // peers that serve or are served learn the file's hash and the IP address
  // (shown in the popup's privacy note), i.e. browsing activity on those sites.
  m.browser_specific_settings.gecko.data_collection_permissions = { required: ['browsingActivity'] };
  // Lets tests (and users) open the popup as a page.
  m.web_accessible_resources = [{ resources: ['popup.html'], matches: ['<all_urls>'] }];
} else {
  console.error(`unknown browser ${browser}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(m, null, 2) + '\n');
