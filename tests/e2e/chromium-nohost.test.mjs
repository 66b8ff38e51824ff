// Chromium without the native host (issue 5): the popup says so and how to install
// it, pages load normally (nothing points at a dead gateway), and the extension
// connects by itself once the host is installed.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  SITE, CHROMIUM_ID, startSwarm, stopSwarm, serverMetrics, waitFor, installHostForChromium, sha256, launchChromium,
} from './harness.mjs';


describe('chromium: the native host is missing', { concurrency: false }, () => {
  let swarm;
  let context;
  let worker;
  let udd;

  before(async () => {
    swarm = await startSwarm({ bigSize: 2 << 20 });
    await swarm.addPeer('honest', ['/static/big.bin']);
    udd = mkdtempSync(join(tmpdir(), 'peercache-nohost-'));
    mkdirSync(join(swarm.dir, 'browser-host'), { recursive: true });
    context = await launchChromium(udd, { PEERCACHE_CACHE_DIR: join(swarm.dir, 'browser-host'), PEERCACHE_CA_CERT: swarm.caPath });
    worker = context.serviceWorkers()[0] ?? await context.waitForEvent('serviceworker');
    await waitFor('the background to start', () => worker.evaluate(() => globalThis.peercache?.ready));
  });

  after(async () => {
    await context?.close();
    await stopSwarm(swarm);
    if (udd) rmSync(udd, { recursive: true, force: true });
  });

  it('says the host is missing, shows how to install it, and pages load straight from the site', async () => {
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    const p = await context.newPage();
    await p.goto(`chrome-extension://${CHROMIUM_ID}/popup.html`);
    await p.waitForSelector('#host-status[data-state="disconnected"]');
    assert.match(await p.textContent('#host'), /peercache-host install --browser/);
    await p.locator(`.site-switch[data-origin="${SITE}"]`).click();
    await p.waitForTimeout(500);
    assert.equal(await worker.evaluate(async () => (await chrome.declarativeNetRequest.getSessionRules()).length), 0,
      'no rule points at a gateway that is not there');
    const before = await serverMetrics(swarm);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#big')]);
    assert.equal(download.url(), `${SITE}/static/big.bin`);
    assert.equal(sha256(readFileSync(await download.path())), sha256(swarm.files.big));
    const after = await serverMetrics(swarm);
    assert.equal(after.peercache_requests_served_total - before.peercache_requests_served_total, 1);
    await p.close();
    await page.close();
  });

  it('connects by itself once the host is installed', async () => {
    await installHostForChromium(udd);
    await waitFor('the host to connect', () => worker.evaluate(() => globalThis.peercache.hostSeen), 40000);
    await waitFor('rules', async () => (await worker.evaluate(async () => (await chrome.declarativeNetRequest.getSessionRules()).length)) === 2);
    const p = await context.newPage();
    await p.goto(`chrome-extension://${CHROMIUM_ID}/popup.html`);
    await p.waitForSelector('#host-status[data-state="connected"]');
    await p.close();
  });
});
