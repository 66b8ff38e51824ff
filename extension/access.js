// peercache: which site a typed address names, as the browser's host-permission
// pattern (`https://example.org/*`). The extension asks for each site the user
// wants, never for every site; match patterns carry no port, so a grant covers
// the host on every port (the brain reads grants the same way, core's HostAccess).

/**
 * The site at `text` (a URL or a bare host): its origin (where its offer is
 * looked for) and the permission pattern to ask for; null if it is none.
 */
export function siteOf(text) {
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
  return { origin: u.origin, pattern: `${u.protocol}//${u.hostname}/*` };
}
