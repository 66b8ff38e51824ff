// peercache: which site a typed address names, as the browser's host-permission
// pattern (`https://example.org/*`). The extension asks for each site the user
// wants, never for every site; match patterns carry no port, so a grant covers
// the host on every port (the brain reads grants the same way, core's HostAccess).

/** The permission pattern for the site at `text` (a URL or a bare host), or null. */
export function sitePattern(text) {
  const raw = String(text ?? '').trim();
  if (!raw || raw.length > 2048) return null;
  let u;
  try {
    u = new URL(raw.includes('://') ? raw : `https://${raw}`);
  } catch (_) {
    return null;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') return null;
  if (!u.hostname || u.username || u.password || u.hostname.includes('*')) return null;
  return `${u.protocol}//${u.hostname}/*`;
}
