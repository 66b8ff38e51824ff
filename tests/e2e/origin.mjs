// A small origin web server for the upstream-mode test site: public assets and
// one that sets a cookie, which must never be shared. Run inside the test
// network namespace: `node origin.mjs <listen ip> <port>`; prints `origin listening`.
import http from 'node:http';

const [ip, port] = process.argv.slice(2);
const pad = 'x'.repeat(20000);
const pages = {
  '/': ['text/html', {}, '<!doctype html><title>shop</title><h1>A site behind peercache-server --upstream</h1>'],
  '/cookie.html': ['text/html', {}, `<!doctype html><html><head><title>cookie page</title></head><body>
<script src="/static/shared.js"></script>
<script src="/static/session.js"></script>
</body></html>`],
  '/static/shared.js': ['text/javascript', { 'Cache-Control': 'public, max-age=3600' },
    `window.sharedLoaded = 'ok'; /* ${pad} */\n`],
  // Public and cacheable but for the cookie: Set-Cookie alone keeps it out of every cache.
  '/static/session.js': ['text/javascript', { 'Cache-Control': 'public, max-age=3600', 'Set-Cookie': 'session=s3cret; Path=/; Secure; SameSite=Lax' },
    `window.sessionLoaded = 'ok'; /* ${pad} */\n`],
};

const counts = {};
http.createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  if (path === '/counts') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(counts));
    return;
  }
  const page = pages[path];
  if (!page) { res.writeHead(404); res.end('not found'); return; }
  counts[path] = counts[path] ?? { requests: 0, with_cookie: 0 };
  counts[path].requests += 1;
  if ((req.headers.cookie ?? '').includes('session=s3cret')) counts[path].with_cookie += 1;
  const [type, headers, body] = page;
  res.writeHead(200, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body), ...headers });
  res.end(req.method === 'HEAD' ? undefined : body);
}).listen(Number(port), ip, () => console.log('origin listening'));
