// Firefox ESR, the two cases where the extension must stay out of the way
// (issue 5): a private window is never intercepted, and without the native host
// pages load straight from the site, the popup says how to install the host, and
// the extension connects by itself once it is installed. Both profiles get the
// same administrator policy switching the test site on, so the only difference
// from an intercepting browser is the private window or the missing host.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import {
  BIN, SITE, startSwarm, stopSwarm, waitFor, firefoxManagedPolicy, launchFirefox, loadAssets, allowSite,
} from './harness.mjs';

const UUID = '0b7e2c44-5d1a-4f3e-8c6b-2a9d7e1f4c30';
const POPUP = `moz-extension://${UUID}/popup.html`;

function launch(home, swarm, prefs = {}, profile = undefined) {
  return launchFirefox(home, {
    uuid: UUID,
    prefs,
    profile,
    env: { PEERCACHE_CACHE_DIR: join(home, 'host-cache'), PEERCACHE_CA_CERT: swarm.caPath },
  });
}

/** Loads the assets page in a new tab; see harness `loadAssets`. */
async function loadAssetsIn(browser, swarm) {
  const page = await browser.newPage();
  try {
    return await loadAssets(page, swarm, swarm.peers.honest);
  } finally {
    await page.close();
  }
}

describe('firefox: private windows and a missing host', { concurrency: false }, () => {
  let swarm;
  const homes = [];
  const newHome = (name) => {
    const home = mkdtempSync(join(tmpdir(), `peercache-ff-${name}-`));
    homes.push(home);
    mkdirSync(join(home, 'host-cache'));
    firefoxManagedPolicy(home, { sites: [SITE] });
    return home;
  };

  before(async () => {
    swarm = await startSwarm({ bigSize: 1 << 20 });
    await swarm.addPeer('honest', ['/static/pic.svg', '/static/app.js']);
  });

  after(async () => {
    await stopSwarm(swarm);
    for (const h of homes) rmSync(h, { recursive: true, force: true });
  });

  // The popup redraws its list every 2 s: a click that lost its button tries again.
  const clickAllow = async (page, origin) => {
    for (let i = 0; ; i++) {
      try { await page.click(`.site-allow[data-origin="${origin}"]`); return; } catch (e) { if (i >= 4) throw e; }
    }
  };

  it('a private window is never intercepted', async () => {
    const home = newHome('private');
    execFileSync(join(BIN, 'peercache-host'), ['install', '--browser', 'firefox'], { env: { ...process.env, HOME: home } });
    const profile = join(home, 'profile');
    mkdirSync(profile);
    // First in a normal window, as its user would: the site allowed, and
    // switched on (by the policy), so only the private window keeps it out.
    const normal = await launch(home, swarm, {}, profile);
    try {
      const page = await normal.newPage();
      await page.goto(`${SITE}/`);
      await page.evaluate((u) => { location.href = u; }, POPUP);
      await page.waitForSelector('#host-status[data-state="connected"]', { timeout: 30000 });
      await allowSite(page, SITE);
      await page.waitForSelector(`.site-switch[data-origin="${SITE}"]:checked:disabled`);
      await waitFor('rules', async () => (await page.evaluate(async () =>
        (await browser.declarativeNetRequest.getSessionRules()).length)) === 2);
    } finally {
      await normal.close();
    }
    // The grant is the profile's (Firefox keeps it with the add-on's preferences).
    const prefs = JSON.parse(readFileSync(join(profile, 'extension-preferences.json'), 'utf8'));
    assert.ok(prefs['peercache@peercache.org']?.origins?.includes(`${SITE}/*`) ?? false, JSON.stringify(prefs));
    // Now every window of this profile is private.
    const browser = await launch(home, swarm, { 'browser.privatebrowsing.autostart': true }, profile);
    try {
      const page = await browser.newPage();
      await page.goto(`${SITE}/`); // the advertisement is seen (or would be)
      await page.close();
      const got = await loadAssetsIn(browser, swarm);
      assert.equal(got.referred, 0, 'no referral');
      assert.equal(got.headersOnly, 0, 'no body replaced');
      assert.equal(got.peerUploaded, 0, 'no peer involved');
      assert.ok(got.bytesServed >= swarm.files.pic.length + swarm.files.app.length, 'the site sent the bytes');
    } finally {
      await browser.close();
    }
  });

  it('without the host, pages load from the site and the popup says how to install it; then it connects by itself', async () => {
    const home = newHome('nohost');
    const browser = await launch(home, swarm);
    try {
      const page = await browser.newPage();
      await page.goto(`${SITE}/`);
      await page.evaluate((u) => { location.href = u; }, POPUP);
      await waitFor('the popup', async () => {
        try { return (await page.evaluate(() => location.href)) === POPUP && await page.$('#host-status'); } catch (_) { return false; }
      });
      await page.waitForSelector('#host-status[data-state="disconnected"]');
      assert.match(await page.$eval('#host', (e) => e.textContent), /peercache-host install --browser/);
      // Listed by the policy before the browser lets the extension reach it:
      // "Allow access" asks for that site; then it is switched on, and locked.
      await page.waitForSelector(`.site-allow[data-origin="${SITE}"]`);
      assert.equal(await page.evaluate(async () => (await browser.permissions.getAll()).origins.length), 1, 'only the gateway');
      await clickAllow(page, SITE);
      await page.waitForSelector('#add-site-result[data-offered="true"]', { timeout: 20000 });
      const site = await page.waitForSelector(`.site-switch[data-origin="${SITE}"]:checked:disabled`);
      assert.ok(site);
      assert.equal(await page.evaluate(async () => (await browser.declarativeNetRequest.getSessionRules()).length), 0,
        'no rule points at a gateway that is not there');
      const without = await loadAssetsIn(browser, swarm);
      assert.equal(without.referred + without.headersOnly, 0, 'straight from the site');

      execFileSync(join(BIN, 'peercache-host'), ['install', '--browser', 'firefox'], { env: { ...process.env, HOME: home } });
      await page.waitForSelector('#host-status[data-state="connected"]', { timeout: 45000 });
      await waitFor('rules', async () => (await page.evaluate(async () =>
        (await browser.declarativeNetRequest.getSessionRules()).length)) === 2);
      const withHost = await loadAssetsIn(browser, swarm);
      assert.equal(withHost.headersOnly, 2, 'now the bodies come through the host');
      assert.equal(withHost.peerUploaded, swarm.files.pic.length + swarm.files.app.length, 'from the peer');
      await page.close();
    } finally {
      await browser.close();
    }
  });
});
