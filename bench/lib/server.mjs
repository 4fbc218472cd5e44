// A static file server on 127.0.0.1 for the benchmark pages: the repository
// root (pkg/, bench/pages/, bench/tmp/, node_modules/).
import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';

const TYPES = {
  '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.css': 'text/css',
};
const ALLOWED = ['/pkg/', '/pkgprof/', '/bench/pages/', '/bench/lib/', '/bench/tmp/', '/bench/data/', '/node_modules/'];

export async function startStaticServer(root, port = 0) {
  const server = createServer(async (request, response) => {
    const path = normalize(decodeURIComponent(new URL(request.url, 'http://x').pathname));
    if (!ALLOWED.some((prefix) => path.startsWith(prefix))) {
      response.writeHead(404).end();
      return;
    }
    try {
      const file = join(root, path);
      if (!(await stat(file)).isFile()) throw new Error('not a file');
      response.writeHead(200, {
        'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
        'cache-control': 'no-store',
      });
      response.end(await readFile(file));
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
