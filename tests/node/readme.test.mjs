// The JavaScript examples of README.md and of the npm package's README run
// as written, with the package import pointed at the local build and the
// relay URL at a `pluresdb relay` on loopback. A `console.log(…); // text`
// line is a claim: what it prints must be that text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { format } from 'node:util';
import { pathToFileURL } from 'node:url';
import WebSocket from 'ws';
import { root, startRelay } from './relay.mjs';
import { codeBlocks, expectedOutput } from './markdown.mjs';

globalThis.WebSocket ??= WebSocket;

let relay;
let relayUrl;
let scratch;

before(async () => {
  relay = await startRelay();
  relayUrl = relay.url;
  scratch = relay.scratch;
});

after(() => relay?.stop());

async function runBlocks(readme) {
  const blocks = codeBlocks(readFileSync(join(root, readme), 'utf8'), 'js');
  assert.ok(blocks.length > 0, `${readme} has js examples`);
  for (const [index, block] of blocks.entries()) {
    const printed = [];
    const source = block
      .replaceAll("from 'pluresdb'", `from '${pathToFileURL(join(root, 'pkg', 'node.js')).href}'`)
      .replaceAll("'ws://127.0.0.1:8080/relay'", `'${relayUrl}'`)
      .replaceAll('console.log(', 'globalThis.__readmeLog(');
    globalThis.__readmeLog = (...args) => printed.push(format(...args));
    const file = join(scratch, `${readme.replaceAll('/', '-')}-${index}.mjs`);
    writeFileSync(file, source);
    await import(pathToFileURL(file).href);
    assert.deepEqual(printed, expectedOutput(block), `${readme}, example ${index + 1}: what it prints`);
  }
}

test('README.md JavaScript examples run', () => runBlocks('README.md'));

test('the npm package README examples run and print what they claim', () => runBlocks('pkg-template/README.md'));
