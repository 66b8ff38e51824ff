// Chromium end to end (issue 2): the built extension and the registered native
// host in real headless Chromium, against the public-looking https site.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, mkdirSync, writeFileSync, readdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import {
  ROOT, SITE, SITE_ADMIN, COOKIE_SITE, CHROMIUM_ID, startSwarm, stopSwarm, serverMetrics, peerMetrics, waitFor,
  installHostForChromium, sha256, get, cacheHolds, launchChromium, hostPid, loadAssets, whyFixture,
} from './harness.mjs';


describe('chromium: peer delivery through the extension', { concurrency: false }, () => {
  let swarm;
  let context;
  let worker;
  let udd;

  const popup = async () => {
    const p = await context.newPage();
    await p.goto(`chrome-extension://${CHROMIUM_ID}/popup.html`);
    return p;
  };
  const ruleCount = () => worker.evaluate(async () => (await chrome.declarativeNetRequest.getSessionRules()).length);
  const subresourceRules = () => worker.evaluate(async () => (await chrome.declarativeNetRequest.getSessionRules())
    .some((r) => r.action.type === 'redirect' && r.condition.resourceTypes.includes('image')));
  const launch = () => launchChromium(udd, {
    PEERCACHE_CACHE_DIR: join(swarm.dir, 'browser-host'),
    PEERCACHE_CA_CERT: swarm.caPath,
    PEERCACHE_LOG: join(swarm.dir, 'browser-host.log'),
  });
  // A browser-level DevTools session (for incognito contexts).
  const browserSession = async () => {
    const port = readFileSync(join(udd, 'DevToolsActivePort'), 'utf8').split('\n')[0];
    const cdpBrowser = await chromium.connectOverCDP(`http://127.0.0.1:${port}`);
    return cdpBrowser.newBrowserCDPSession();
  };
  const ready = async () => {
    worker = context.serviceWorkers()[0] ?? await context.waitForEvent('serviceworker');
    await waitFor('the background to be ready', () => worker.evaluate(() => globalThis.peercache?.ready && globalThis.peercache.hostSeen));
  };

  before(async () => {
    swarm = await startSwarm();
    const honest = await swarm.addPeer('honest', ['/static/big.bin', '/static/pic.svg', '/static/app.js']);
    assert.equal(honest.announced, 3, 'the honest peer is listed for the three files it fetched');
    const liar = await swarm.addPeer('liar', ['/static/lie.bin']);
    assert.equal(liar.announced, 1);
    // The liar's copy goes bad after it was announced and after it computed the
    // true group CVs: it now serves a valid outboard with wrong bytes.
    const liarHash = readdirHash(liar.cache);
    // Its verification data was computed when it kept the object.
    assert.ok(existsSync(join(liar.cache, 'outboard', liarHash)));
    const liarFile = join(liar.cache, 'objects', liarHash);
    const bytes = readFileSync(liarFile);
    bytes[1000] ^= 0xff;
    writeFileSync(liarFile, bytes);

    udd = mkdtempSync(join(tmpdir(), 'peercache-chromium-'));
    await installHostForChromium(udd);
    mkdirSync(join(swarm.dir, 'browser-host'), { recursive: true });
    context = await launch();
    await ready();
    assert.ok(worker.url().startsWith(`chrome-extension://${CHROMIUM_ID}/`), worker.url());
  });

  after(async () => {
    await context?.close();
    await stopSwarm(swarm);
    if (udd) rmSync(udd, { recursive: true, force: true });
  });

  it('lists the advertised site and intercepts it only after the user switches it on', async () => {
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    assert.equal(await ruleCount(), 0, 'nothing is intercepted before the user opts in');
    const p = await popup();
    await p.waitForSelector('#host-status[data-state="connected"]');
    const sw = p.locator(`.site-switch[data-origin="${SITE}"]`);
    await sw.waitFor();
    assert.equal(await sw.isChecked(), false);
    await sw.click();
    await waitFor('interception rules', async () => (await ruleCount()) === 2);
    const rules = await worker.evaluate(async () => chrome.declarativeNetRequest.getSessionRules());
    const token = rules.find((r) => r.action.type === 'modifyHeaders').action.requestHeaders[0].value;
    assert.ok(token.length >= 32);
    assert.ok(!JSON.stringify(rules.filter((r) => r.action.type === 'redirect')).includes(token), 'the token never appears in a URL');
    await p.close();
    await page.close();
  });

  it('downloads the large file from the peer, byte-identical', async () => {
    const before = await serverMetrics(swarm);
    const peerBefore = await peerMetrics(swarm.peers.honest);
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#big')]);
    assert.match(download.url(), /^http:\/\/127\.0\.0\.1:\d+\/g\/https:\/\/198\.51\.100\.2\/static\/big\.bin$/);
    const got = readFileSync(await download.path());
    assert.equal(got.length, swarm.files.big.length);
    assert.equal(sha256(got), sha256(swarm.files.big));
    const after = await serverMetrics(swarm);
    const peerAfter = await peerMetrics(swarm.peers.honest);
    assert.equal(after.peercache_requests_referred_total - before.peercache_requests_referred_total, 1, 'the server referred');
    assert.equal(after.peercache_served_bytes_total - before.peercache_served_bytes_total, swarm.files.index.length,
      'the server sent the page, not the file');
    // Counted per request: a large object goes in 1 MiB runs, so that
    // sources joining mid-download can share the work (issue 12).
    assert.ok(peerAfter.peercache_uploads_total - peerBefore.peercache_uploads_total >= 1, 'the peer uploaded');
    assert.equal(peerAfter.peercache_bytes_uploaded_total - peerBefore.peercache_bytes_uploaded_total, swarm.files.big.length);
    await page.close();
  });

  it("shows the page's image and script from the peer once the loopback permission is granted", async () => {
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Browser.grantPermissions', { origin: SITE, permissions: ['loopbackNetwork', 'localNetwork'] });
    // The extension learns of the permission on the site's next page.
    await page.goto(`${SITE}/`);
    await waitFor('subresource rules', () => subresourceRules());
    const got = await loadAssets(page, swarm, swarm.peers.honest);
    assert.equal(got.referred, 2);
    assert.equal(got.peerUploads, 2);
    assert.equal(got.peerUploaded, swarm.files.pic.length + swarm.files.app.length);
    await page.close();
  });

  it('with the toggle switched off in the popup, the bytes come straight from the server', async () => {
    const p = await popup();
    await p.waitForSelector('#toggle');
    assert.equal(await p.isChecked('#toggle'), true);
    await p.click('#toggle');
    await waitFor('rules removed', async () => (await ruleCount()) === 0);
    const before = await serverMetrics(swarm);
    const peerBefore = await peerMetrics(swarm.peers.honest);
    const page = await context.newPage();
    await page.goto(`${SITE}/assets.html`);
    await page.waitForFunction(() => window.appLoaded === 'ok' && document.getElementById('pic').complete);
    assert.equal(await page.evaluate(() => document.getElementById('pic').naturalWidth), 120);
    await page.goto(`${SITE}/`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#big')]);
    assert.equal(download.url(), `${SITE}/static/big.bin`);
    assert.equal(sha256(readFileSync(await download.path())), sha256(swarm.files.big));
    const after = await serverMetrics(swarm);
    const peerAfter = await peerMetrics(swarm.peers.honest);
    assert.equal(after.peercache_requests_referred_total, before.peercache_requests_referred_total, 'no referrals');
    assert.ok(after.peercache_served_bytes_total - before.peercache_served_bytes_total
      >= swarm.files.big.length + swarm.files.pic.length + swarm.files.app.length, 'the server sent the bytes');
    assert.equal(peerAfter.peercache_uploads_total, peerBefore.peercache_uploads_total, 'the peer sent nothing');
    await p.click('#toggle');
    await waitFor('rules back', async () => (await ruleCount()) === 2);
    await p.close();
    await page.close();
  });

  it('switching one site off stops its interception at once', async () => {
    const p = await popup();
    const sw = p.locator(`.site-switch[data-origin="${SITE}"]`);
    await sw.click();
    await waitFor('rules removed', async () => (await ruleCount()) === 0);
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#big')]);
    assert.equal(download.url(), `${SITE}/static/big.bin`, 'straight from the site');
    await download.path();
    await sw.click();
    await waitFor('rules back', async () => (await ruleCount()) === 2);
    await p.close();
    await page.close();
  });

  it('never hands a lying peer\'s bytes to the user: the right bytes arrive from the server', async () => {
    const before = await serverMetrics(swarm);
    const liarBefore = await peerMetrics(swarm.peers.liar);
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#lie')]);
    const got = readFileSync(await download.path());
    assert.equal(sha256(got), sha256(swarm.files.lie), 'the user got the true bytes');
    const after = await serverMetrics(swarm);
    const liarAfter = await peerMetrics(swarm.peers.liar);
    assert.equal(liarAfter.peercache_uploads_total - liarBefore.peercache_uploads_total, 1, 'the liar was tried');
    assert.equal(after.peercache_mismatch_reports_total - before.peercache_mismatch_reports_total, 1, 'the mismatch was reported');
    assert.equal(after.peercache_served_bytes_total - before.peercache_served_bytes_total,
      swarm.files.index.length + swarm.files.lie.length, 'the server sent the page and the true file');
    await page.close();
  });

  it('a refused loopback permission never breaks a page, and downloads still go through peers', async () => {
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Browser.setPermission', { origin: SITE, permission: { name: 'loopback-network' }, setting: 'denied' });
    await page.goto(`${SITE}/`);
    await waitFor('subresource rules removed', async () => !(await subresourceRules()));
    const before = await serverMetrics(swarm);
    await page.goto(`${SITE}/assets.html`);
    await page.waitForFunction(() => window.appLoaded === 'ok' && document.getElementById('pic').complete);
    assert.equal(await page.evaluate(() => document.getElementById('pic').naturalWidth), 120, 'the page is intact');
    const mid = await serverMetrics(swarm);
    assert.equal(mid.peercache_requests_referred_total, before.peercache_requests_referred_total, 'subresources came straight from the site');
    const peerBefore = await peerMetrics(swarm.peers.honest);
    await page.goto(`${SITE}/`);
    const beforeBig = await serverMetrics(swarm);
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#big')]);
    assert.match(download.url(), /^http:\/\/127\.0\.0\.1:/);
    assert.equal(sha256(readFileSync(await download.path())), sha256(swarm.files.big));
    const peerAfter = await peerMetrics(swarm.peers.honest);
    assert.equal(peerAfter.peercache_bytes_uploaded_total - peerBefore.peercache_bytes_uploaded_total, 0,
      'the host already had the file: served from its own cache, verified');
    // The first copy came from a peer, with the site's headers in the
    // referral (issue 14): the host knew its version and asked conditionally.
    const afterBig = await serverMetrics(swarm);
    assert.equal(afterBig.peercache_requests_not_modified_total - (beforeBig.peercache_requests_not_modified_total ?? 0), 1,
      'revalidated with a 304');
    assert.equal(afterBig.peercache_requests_referred_total, beforeBig.peercache_requests_referred_total, 'not referred again');
    assert.equal(afterBig.peercache_served_bytes_total, beforeBig.peercache_served_bytes_total, 'no bytes from the server');
    const p = await popup();
    const hint = p.locator(`.lna[data-origin="${SITE}"]`);
    await hint.waitFor();
    assert.match(await hint.textContent(), /access other apps and services on this device/);
    await p.close();
    await page.close();
  });

  it('the popup sets the sharing limits and the host applies them at once', async () => {
    const p = await popup();
    await p.waitForSelector('#host-status[data-state="connected"]');
    await p.fill('#max-uploads', '3');
    await p.fill('#upload-rate', '2');
    await p.fill('#cache-max', '64');
    await p.click('#apply-limits');
    await p.waitForFunction(() => document.body.dataset.hostMaxUploads === '3'
      && document.body.dataset.hostCacheMax === String(64 * 1048576));
    const view = await worker.evaluate(() => globalThis.peercache.view());
    assert.equal(view.limits.max_uploads, 3);
    assert.equal(view.limits.upload_rate, 2 * 1048576);
    assert.ok(view.limits.cache_bytes <= 64 * 1048576);
    await p.close();
  });

  it('a private window is never intercepted', async () => {
    const page = await context.newPage();
    const cdp = await browserSession();
    const { browserContextId } = await cdp.send('Target.createBrowserContext');
    const before = await serverMetrics(swarm);
    const { targetId } = await cdp.send('Target.createTarget', { url: `${SITE}/assets.html`, browserContextId });
    await waitFor('the private page to load', async () => {
      const m = await serverMetrics(swarm);
      return m.peercache_requests_served_total - before.peercache_requests_served_total >= 3;
    });
    const after = await serverMetrics(swarm);
    assert.equal(after.peercache_requests_referred_total, before.peercache_requests_referred_total, 'no referral');
    await cdp.send('Target.closeTarget', { targetId });
    await cdp.send('Target.disposeBrowserContext', { browserContextId });
    await page.close();
  });

  it('the admin page shows the live offload, peers and mismatches', async () => {
    const page = await context.newPage();
    await page.setViewportSize({ width: 1020, height: 640 });
    await page.goto(`${SITE_ADMIN}/admin`);
    await page.waitForSelector('body[data-loaded="1"]');
    await page.waitForFunction(() => document.querySelectorAll('#peer-rows tr').length >= 3);
    const stats = await (await page.request.get(`${SITE_ADMIN}/admin/stats.json`)).json();
    // The large file, the image, the script and the lie (the large file's
    // second download was a 304).
    assert.ok(stats.requests_referred >= 4, JSON.stringify(stats));
    assert.ok(stats.bytes_from_peers >= swarm.files.big.length);
    assert.equal(stats.mismatch_reports, 1);
    const shown = await page.textContent('#offload');
    assert.match(shown, /^\d+\.\d%$/);
    assert.equal(await page.textContent('#referred'), String(stats.requests_referred));
    if (SHOTS) await page.screenshot({ path: join(SHOTS, 'admin.png') });
    await page.close();
  });

  it('the popup shows the host, the site switch and live counters', async () => {
    const p = await popup();
    await p.setViewportSize({ width: 360, height: 560 });
    await p.waitForSelector('#host-status[data-state="connected"]');
    await p.waitForFunction(() => document.getElementById('from-peers').textContent !== '0 B'
      && document.getElementById('from-server').textContent !== '0 B');
    const fromPeers = await p.textContent('#from-peers');
    assert.match(fromPeers, /MiB|KiB/);
    // The large file came once from the peer and once from the host's own cache.
    const view = await worker.evaluate(() => globalThis.peercache.view());
    assert.ok(view.counters.bytes_from_cache >= swarm.files.big.length, JSON.stringify(view.counters));
    assert.equal(view.bytes_saved, view.counters.bytes_from_peers + view.counters.bytes_from_cache);
    assert.match(await p.textContent('#saved'), /MiB/);
    if (SHOTS) await p.screenshot({ path: join(SHOTS, 'popup-chromium.png') });
    await p.close();
  });

  it("the popup lists the peers that served the active tab's site", async () => {
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    const p = await popup();
    await page.bringToFront();
    // The popup refreshes every 2 s and then shows the active tab's site.
    await p.waitForFunction((site) => document.body.dataset.activeSite === site, SITE, { timeout: 10000 });
    const row = p.locator(`.peer[data-site="${SITE}"][data-addr$=":${swarm.peers.honest.udpPort}"]`);
    await row.waitFor({ timeout: 10000 });
    assert.match(await row.textContent(), /MiB/, 'with the bytes it sent');
    // The liar sent bytes too (they were rejected): only verified bytes count.
    const liar = p.locator(`.peer[data-addr$=":${swarm.peers.liar.udpPort}"]`);
    assert.ok((await liar.count()) <= 1);
    await p.close();
    await page.close();
  });

  it("the popup says why the active tab's site's files came as they did, readable at its size", async () => {
    const { why, inject, overflow } = await whyFixture(SITE);
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    const p = await popup();
    await p.setViewportSize({ width: 360, height: 600 });
    await p.evaluate(inject, why);
    await page.bringToFront();
    await p.waitForFunction((site) => document.body.dataset.activeSite === site, SITE, { timeout: 10000 });
    await p.waitForFunction(() => document.querySelectorAll('#why .why').length === 2, null, { timeout: 10000 });
    assert.equal(await p.textContent('#why-site'), `for ${SITE}`);
    const rows = await p.$$eval('#why .why', (lis) => lis.map((li) => ({ came: li.dataset.came, text: li.innerText })));
    assert.deepEqual(rows.map((r) => r.came), ['peers', 'cache'], 'only this site\'s files, newest first');
    assert.match(rows[0].text, /a-rather-long-file-name-for-the-popup-2026-release-candidate\.webm/);
    assert.match(rows[0].text, /peers hold it/);
    assert.match(rows[0].text, /Order: peer\s9f86d081… 4\sms → peer\s60303ae2… 31\sms → the site/);
    assert.match(rows[0].text, /Bytes: peer\s9f86d081… 2\.0\sMiB/);
    assert.doesNotMatch(await p.textContent('#why'), /logo\.svg/, 'another site\'s file is not listed');
    assert.deepEqual(await p.evaluate(overflow), { page: false, cut: [] }, 'nothing is cut off');
    if (SHOTS) await p.screenshot({ path: join(SHOTS, 'popup-why-chromium.png'), fullPage: true });
    await p.close();
    await page.close();
  });

  it("the popup says why the large file came from a peer: the host's own story of a real referral", async () => {
    // The file downloaded from the peer earlier in this run, as the host told it.
    const page = await context.newPage();
    await page.goto(`${SITE}/`);
    const p = await popup();
    await page.bringToFront();
    await p.waitForFunction((site) => document.body.dataset.activeSite === site, SITE, { timeout: 10000 });
    const row = p.locator('#why .why[data-came="peers"]', { hasText: 'big.bin' }).first();
    await row.waitFor({ timeout: 10000 });
    const text = await row.innerText();
    assert.match(text, /cannot send it within the target period and peers hold it/, 'the server\'s reason');
    assert.match(text, /Order: peer\s[0-9a-f]{8}… \d+\sms/, 'the chosen order with the measured round trip');
    assert.match(text, /Bytes: peer\s[0-9a-f]{8}… \d+\.\d\sMiB/, 'which peer sent the bytes');
    await p.close();
    await page.close();
  });

  it('a response with Set-Cookie is never shared, and its URL goes to the site itself from then on', async () => {
    // Enrol the second site (the origin behind peercache-server --upstream) with the loopback permission.
    const page = await context.newPage();
    const cdp = await context.newCDPSession(page);
    await cdp.send('Browser.grantPermissions', { origin: COOKIE_SITE, permissions: ['loopbackNetwork', 'localNetwork'] });
    // "Switch on advertised sites automatically": the site is on as soon as it advertises.
    const p = await popup();
    await p.click('#auto');
    await p.waitForFunction(() => document.getElementById('auto').checked);
    await page.goto(`${COOKIE_SITE}/`);
    await p.reload();
    const sw = p.locator(`.site-switch[data-origin="${COOKIE_SITE}"]`);
    await sw.waitFor();
    assert.equal(await sw.isChecked(), true, 'switched on by the auto setting');
    await p.click('#auto');
    await page.goto(`${COOKIE_SITE}/`);
    await waitFor('subresource rules for the second site', () => worker.evaluate(async (site) =>
      (await chrome.declarativeNetRequest.getSessionRules()).some((r) => r.action.type === 'redirect'
        && r.condition.regexFilter.includes(site.replace(/\./g, '\\.')) && r.condition.resourceTypes.includes('script')),
    COOKIE_SITE));
    const before = await serverMetrics(swarm, COOKIE_SITE);
    await page.goto(`${COOKIE_SITE}/cookie.html`);
    await page.waitForFunction(() => window.sharedLoaded === 'ok' && window.sessionLoaded === 'ok');
    // The gateway met Set-Cookie, the extension added the allow rule, and the
    // gateway sent the browser to the site itself: the cookie landed at once.
    assert.match(await page.evaluate(() => document.cookie), /session=s3cret/, 'the cookie is set on the first load');
    const mid = await serverMetrics(swarm, COOKIE_SITE);
    assert.ok(mid.peercache_requests_passed_through_total - before.peercache_requests_passed_through_total >= 1);
    // The extension was told, and the URL now has an allow rule.
    await waitFor('the allow rule', () => worker.evaluate(async (url) => (await chrome.declarativeNetRequest.getSessionRules())
      .some((r) => r.action.type === 'allow' && new RegExp(r.condition.regexFilter).test(url)), `${COOKIE_SITE}/static/session.js`));
    const host = join(swarm.dir, 'browser-host');
    await waitFor('the shareable script kept', () => cacheHolds(host, swarm.cookieFiles.shared));
    assert.equal(cacheHolds(host, swarm.cookieFiles.session), false, 'the cookie-setting script was never kept');
    // Next loads: the script comes from the site itself, so its cookie lands on the site.
    await page.reload();
    await page.waitForFunction(() => window.sessionLoaded === 'ok');
    assert.match(await page.evaluate(() => document.cookie), /session=s3cret/);
    // With the cookie in the browser, every request to the site's scope would carry
    // it: the site is no longer intercepted at all, and the popup says why.
    await waitFor('the cookie-bound site to lose its redirect rules', () => worker.evaluate(async (site) =>
      !(await chrome.declarativeNetRequest.getSessionRules()).some((r) => r.action.type === 'redirect'
        && r.condition.regexFilter.includes(site.replace(/\./g, '\\.'))), COOKIE_SITE));
    await p.reload();
    await p.locator(`.cookies[data-origin="${COOKIE_SITE}"]`).waitFor();
    const sharedBefore = (await swarm.originCounts())['/static/shared.js'].with_cookie;
    await page.goto(`${COOKIE_SITE}/cookie.html?again`);
    await page.waitForFunction(() => window.sessionLoaded === 'ok' && window.sharedLoaded === 'ok');
    const counts = await swarm.originCounts();
    assert.ok(counts['/cookie.html'].with_cookie >= 1, `the site got its cookie back: ${JSON.stringify(counts)}`);
    assert.ok(counts['/static/shared.js'].with_cookie >= sharedBefore, JSON.stringify(counts));
    assert.equal(cacheHolds(host, swarm.cookieFiles.session), false);
    // A fresh client asking the server for it is served, never referred.
    const after = await serverMetrics(swarm, COOKIE_SITE);
    assert.equal(after.peercache_requests_referred_total ?? 0, before.peercache_requests_referred_total ?? 0);
    await p.close();
    await page.close();
  });

  it('a host that stops answering: the rules come down and pages load from the site, then peers come back', async () => {
    const pid = hostPid(join(swarm.dir, 'browser-host'));
    assert.ok(pid, 'the browser started the host');
    const rules = await ruleCount();
    assert.ok(rules >= 2);
    process.kill(pid, 'SIGSTOP');
    const page = await context.newPage();
    try {
      await waitFor('rules removed', async () => (await ruleCount()) === 0, 15000);
      const before = await serverMetrics(swarm);
      await page.goto(`${SITE}/assets.html`);
      await page.waitForFunction(() => window.appLoaded === 'ok' && document.getElementById('pic').complete);
      assert.equal(await page.evaluate(() => document.getElementById('pic').naturalWidth), 120);
      const after = await serverMetrics(swarm);
      assert.equal(after.peercache_requests_referred_total, before.peercache_requests_referred_total, 'straight from the site');
      const p = await popup();
      await p.waitForSelector('#host-status[data-state="disconnected"]');
      assert.match(await p.textContent('#host'), /stopped answering/);
      await p.close();
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await waitFor('rules back', async () => (await ruleCount()) === rules, 15000);
    await page.close();
  });

  it('settings survive a browser restart', async () => {
    await context.close();
    context = await launch();
    await ready();
    await waitFor('rules restored', async () => (await ruleCount()) >= 2);
    const p = await popup();
    const sw = p.locator(`.site-switch[data-origin="${SITE}"]`);
    await sw.waitFor();
    assert.equal(await sw.isChecked(), true);
    assert.equal(await p.inputValue('#max-uploads'), '3');
    await p.close();
  });
});

const SHOTS = process.env.PEERCACHE_SCREENSHOTS ? join(ROOT, 'docs') : null;

function readdirHash(cache) {
  const names = readdirSync(join(cache, 'objects')).filter((n) => /^[0-9a-f]{64}$/.test(n));
  assert.equal(names.length, 1);
  return names[0];
}
