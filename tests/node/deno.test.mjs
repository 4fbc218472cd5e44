// Deno runs the npm package's README example through an `npm:` specifier,
// on the native addon (Deno loads Node-API addons): the package is linked
// into a scratch project's node_modules, as `npm install` would put it, and
// Deno (the npm package `deno`, a devDependency) runs with
// --node-modules-dir=manual. Every `console.log(…); // text` claim must print
// that text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { backend } from '../../pkg/node.js';
import { root } from './relay.mjs';
import { codeBlocks, expectedOutput } from './markdown.mjs';

const run = promisify(execFile);
const deno = join(root, 'node_modules', '.bin', 'deno');

test('Deno runs the npm README\'s first example through npm:pluresdb on the addon',
  { skip: backend === 'native' ? false : 'the WebAssembly run has no addon' }, async () => {
    const version = createRequire(import.meta.url)('deno/package.json').version;
    const [block] = codeBlocks(readFileSync(join(root, 'pkg-template/README.md'), 'utf8'), 'js');
    const project = mkdtempSync(join(tmpdir(), 'pluresdb-deno-'));
    try {
      mkdirSync(join(project, 'node_modules'));
      symlinkSync(join(root, 'pkg'), join(project, 'node_modules', 'pluresdb'), 'dir');
      const source = `import { format as __format } from 'node:util';\n${block}`
        .replaceAll("from 'pluresdb'", "from 'npm:pluresdb'")
        // Node's formatting of the printed values, whatever Deno's console does.
        .replaceAll('console.log(', 'console.info(__format(')
        .replace(/console\.info\(__format\((.*)\);/g, 'console.info(__format($1));')
        .concat("\nconsole.info(__format('backend %s, storage %s', (await import('npm:pluresdb')).backend, db.storageKind));\n");
      writeFileSync(join(project, 'main.mjs'), source);
      const { stdout } = await run(deno, ['run', '--allow-all', '--node-modules-dir=manual', 'main.mjs'], {
        cwd: project,
        env: { ...process.env, PLURESDB_DATA_DIR: join(project, 'data'), DENO_DIR: join(project, '.deno') },
      });
      const printed = stdout.trimEnd().split('\n');
      assert.deepEqual(printed, [...expectedOutput(block), 'backend native, storage sqlite'], `Deno ${version} printed:\n${stdout}`);
    } finally {
      rmSync(project, { recursive: true, force: true });
    }
  });
