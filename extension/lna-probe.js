// peercache: tells the background whether this site may reach apps on this device
// (Chromium's Local Network Access "loopback" permission). Only then are the
// site's images, scripts and fetches redirected to the local gateway; without it
// they load straight from the site, so a missing or refused permission never
// breaks a page. Sends nothing but this page's origin and the permission state.
(async () => {
  const api = globalThis.browser ?? globalThis.chrome;
  let status = null;
  // Firefox: subresources keep their own request (filterResponseData), so the
  // permission does not matter there.
  const firefox = navigator.userAgent.includes('Firefox/');
  for (const name of firefox ? [] : ['loopback-network', 'local-network-access']) {
    try { status = await navigator.permissions.query({ name }); break; } catch (_) { /* unknown name */ }
  }
  const send = (state) => api.runtime.sendMessage({ cmd: 'loopback', origin: location.origin, state }).catch(() => {});
  if (!status) { send('unsupported'); return; }
  send(status.state);
  status.onchange = () => send(status.state);
})();
