// The JavaScript example in README.md runs as written (with the package
// import pointed at the local build).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));

export function codeBlocks(markdown, language) {
  const pattern = new RegExp('```' + language + '\\n([\\s\\S]*?)```', 'g');
  return [...markdown.matchAll(pattern)].map((match) => match[1]);
}

test('README.md JavaScript examples run', async () => {
  const blocks = codeBlocks(readFileSync(join(root, 'README.md'), 'utf8'), 'js');
  assert.ok(blocks.length > 0, 'README.md has a js example');
  const dir = mkdtempSync(join(tmpdir(), 'pluresdb-readme-'));
  try {
    for (const [index, block] of blocks.entries()) {
      const source = block.replaceAll("from 'pluresdb'",
        `from '${pathToFileURL(join(root, 'pkg', 'node.js')).href}'`);
      const file = join(dir, `example-${index}.mjs`);
      writeFileSync(file, source);
      await import(pathToFileURL(file).href);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
