// Chromium under an administrator's policy (issue 5, point 3): the extension's
// managed storage switches the site on and fixes the sharing limits, and the
// browser's Local Network Access policy grants the site the loopback permission,
// so a whole fleet gets page assets through peers without a single prompt.
// Writes /etc/chromium/policies/managed/peercache-e2e.json (needs root) and
// removes it afterwards.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, existsSync, readdirSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  SITE, CHROMIUM_ID, startSwarm, stopSwarm, waitFor, installHostForChromium, launchChromium, loadAssets,
} from './harness.mjs';

const POLICY_DIR = '/etc/chromium/policies/managed';
const POLICY_FILE = join(POLICY_DIR, 'peercache-e2e.json');

describe('chromium: settings managed by an administrator', { concurrency: false }, () => {
  let swarm;
  let context;
  let worker;
  let udd;
  let createdDir = false;

  before(async () => {
    swarm = await startSwarm({ bigSize: 1 << 20 });
    await swarm.addPeer('honest', ['/static/pic.svg', '/static/app.js']);
    createdDir = !existsSync(POLICY_DIR);
    mkdirSync(POLICY_DIR, { recursive: true });
    writeFileSync(POLICY_FILE, JSON.stringify({
      LocalNetworkAccessAllowedForUrls: [SITE],
      LoopbackNetworkAllowedForUrls: [SITE],
      '3rdparty': {
        extensions: {
          [CHROMIUM_ID]: {
            sites: [SITE],
            limits: { max_uploads: 2, upload_rate: 1048576, cache_max: 64 * 1048576 },
          },
        },
      },
    }, null, 2));
    udd = mkdtempSync(join(tmpdir(), 'peercache-managed-'));
    await installHostForChromium(udd);
    mkdirSync(join(swarm.dir, 'browser-host'), { recursive: true });
    context = await launchChromium(udd, { PEERCACHE_CACHE_DIR: join(swarm.dir, 'browser-host'), PEERCACHE_CA_CERT: swarm.caPath });
    worker = context.serviceWorkers()[0] ?? await context.waitForEvent('serviceworker');
    await waitFor('the background to be ready', () => worker.evaluate(() => globalThis.peercache?.ready && globalThis.peercache.hostSeen));
  });

  after(async () => {
    await context?.close();
    rmSync(POLICY_FILE, { force: true });
    if (createdDir && existsSync(POLICY_DIR) && readdirSync(POLICY_DIR).length === 0) rmdirSync(POLICY_DIR);
    await stopSwarm(swarm);
    if (udd) rmSync(udd, { recursive: true, force: true });
  });

  it('the policy switches the site on and locks it, and the host applies the fixed limits', async () => {
    assert.deepEqual((await worker.evaluate(() => chrome.storage.managed.get())).sites, [SITE]);
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    await waitFor('interception rules', async () => (await worker.evaluate(async () =>
      (await chrome.declarativeNetRequest.getSessionRules()).length)) === 2);
    const p = await context.newPage();
    await p.goto(`chrome-extension://${CHROMIUM_ID}/popup.html`);
    const sw = p.locator(`.site-switch[data-origin="${SITE}"]`);
    await sw.waitFor();
    assert.equal(await sw.isChecked(), true, 'switched on without the user');
    assert.equal(await sw.isDisabled(), true, 'the user cannot switch it off');
    assert.match(await p.textContent('.site .managed'), /administrator/);
    assert.equal(await p.isDisabled('#max-uploads'), true);
    await p.waitForFunction(() => document.body.dataset.hostMaxUploads === '2'
      && document.body.dataset.hostCacheMax === String(64 * 1048576));
    // The limits in force are the policy's.
    const view = await worker.evaluate(() => globalThis.peercache.view());
    assert.equal(view.user_limits.max_uploads, 2);
    await p.close();
    await page.close();
  });

  it('the loopback permission granted by policy sends page assets through peers, with no prompt', async () => {
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    await waitFor('subresource rules', () => worker.evaluate(async () => (await chrome.declarativeNetRequest.getSessionRules())
      .some((r) => r.action.type === 'redirect' && r.condition.resourceTypes.includes('image'))));
    const got = await loadAssets(page, swarm, swarm.peers.honest);
    assert.equal(got.referred, 2);
    assert.equal(got.peerUploaded, swarm.files.pic.length + swarm.files.app.length);
    await page.close();
  });

  it('a cookie anywhere inside the scope stops interception of the site until it is gone', async () => {
    const rules = () => worker.evaluate(async () => (await chrome.declarativeNetRequest.getSessionRules()).length);
    assert.equal(await rules(), 2);
    // A cookie for a deeper path than the scope root: requests there would carry it.
    await context.addCookies([{ name: 'deep', value: '1', domain: '198.51.100.2', path: '/static/deep/', secure: true }]);
    await waitFor('the site to lose its rules', async () => (await rules()) === 0);
    await context.clearCookies();
    await waitFor('the rules back', async () => (await rules()) === 2);
  });
});
