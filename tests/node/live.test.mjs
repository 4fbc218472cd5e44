// Live queries, change events, invites, sync and conflicts in Node, through
// the real `pluresdb relay` binary on loopback. Node 20 has no global
// WebSocket: the `ws` package provides one, as Node users of sync would.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { startRelay } from './relay.mjs';
import init, { PluresDB } from '../../pkg/node.js';

globalThis.WebSocket ??= WebSocket;
await init();

let relay;
let relayUrl;

before(async () => {
  relay = await startRelay();
  relayUrl = relay.url;
});

after(() => relay?.stop());

const until = async (check, what) => {
  const deadline = Date.now() + 15_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

test('watch calls back with the current result and again on each change', async () => {
  const db = await PluresDB.open('node-watch');
  await db.put('todo:1', { done: false, title: 'a' });
  const calls = [];
  const unwatch = db.watch({ prefix: 'todo:', where: { done: false }, sort: 'title' }, (records) => {
    calls.push(records.map((r) => r.id));
  });
  await until(() => calls.length === 1, 'the first call');
  assert.deepEqual(calls[0], ['todo:1']);
  await db.putMany([['todo:2', { done: false, title: 'b' }], ['todo:3', { done: true, title: 'c' }]]);
  await until(() => calls.length === 2, 'a call after putMany');
  assert.deepEqual(calls[1], ['todo:1', 'todo:2'], 'one call for one commit');
  await db.put('other:1', { done: false }); // outside the prefix: no call
  await db.put('todo:1', { done: true, title: 'a' });
  await until(() => calls.length === 3, 'a call after an update');
  assert.deepEqual(calls[2], ['todo:2']);
  unwatch();
  await db.put('todo:4', { done: false, title: 'd' });
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(calls.length, 3, 'no calls after unwatch');
  await db.close();
});

test('subscribe delivers upserts and deletes; unsubscribe stops it', async () => {
  const db = await PluresDB.open('node-events');
  const events = [];
  const unsubscribe = db.subscribe((event) => events.push(event));
  await db.put('a', 1);
  await db.delete('a');
  await until(() => events.length === 2, 'two events');
  assert.deepEqual(events, [{ kind: 'upsert', id: 'a' }, { kind: 'delete', id: 'a' }]);
  unsubscribe();
  await db.put('b', 2);
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(events.length, 2);
  await db.close();
});

test('two databases sync through the relay; concurrent edits keep a conflict', async () => {
  const a = await PluresDB.open('node-sync-a');
  await a.put('note', { text: 'original' });
  const invite = await a.createInvite();
  assert.equal(await a.createInvite(), invite, 'the same invite every time');
  a.sync(relayUrl);
  const b = await PluresDB.open('node-sync-b', { invite, relay: relayUrl });
  const peers = [];
  b.subscribe((e) => { if (e.kind.startsWith('peer')) peers.push(e.kind); });
  await until(async () => (await b.get('note'))?.text === 'original', 'b gets the note');
  await until(() => a.syncStatus().state === 'synced' && b.syncStatus().state === 'synced', 'both synced');
  await until(() => a.syncStatus().peers === 1, 'a counts b as a peer (its MEMBERS frame may come after both are synced)');
  assert.match(a.syncStatus().transport, /relay ws:/);
  await until(() => peers.includes('peer-connected'), 'a peer-connected event');

  a.stopSync();
  b.stopSync();
  assert.equal(a.syncStatus().state, 'stopped');
  await a.put('note', { text: 'from a' });
  await b.put('note', { text: 'from b' });
  a.sync(relayUrl);
  b.sync(relayUrl);
  await until(async () => (await a.conflicts('note')).length === 1 && (await b.conflicts('note')).length === 1, 'the conflict on both');
  const [va, vb] = [await a.get('note'), await b.get('note')];
  assert.deepEqual(va, vb, 'the same winner');
  const [ca] = await a.conflicts('note');
  assert.equal(ca.deleted, false);
  assert.match(ca.writer, /^[0-9a-f]{32}$/);
  assert.ok(ca.timestamp > 1_600_000_000_000);
  assert.notDeepEqual(ca.data, va);
  // A later write resolves it everywhere.
  await b.put('note', { text: 'merged' });
  await until(async () => (await a.get('note'))?.text === 'merged' && (await a.conflicts('note')).length === 0, 'resolution');
  await a.close();
  await b.close();
  await assert.rejects(PluresDB.open('bad', { invite: 'not an invite' }), { name: 'InvalidInputError' });
});
