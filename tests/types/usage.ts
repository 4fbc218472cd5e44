// Uses every method of the npm package with its declared types; checked by
// `tsc --noEmit --strict` (the node test suite). The expected-error lines at
// the end must stay type errors: the declarations are not `any`.
import init, {
  PluresDB,
  hashEmbed,
  type ChangeEvent,
  type ConflictVersion,
  type IndexStats,
  type ListPage,
  type PluresDBError,
  type PluresDBErrorName,
  type Query,
  type SearchHit,
  type StorageStatus,
  type SyncStatus,
  type SyncTransport,
  type SyncTransportLink,
} from '../../pkg/pluresdb.js';
import { hyperswarmTransport, type HyperswarmLike } from '../../pkg/hyperswarm.js';

export async function everyMethod(): Promise<void> {
  await init();
  const db: PluresDB = await PluresDB.open('types', {
    storage: 'memory',
    embedder: async (texts: string[]) => hashEmbed(texts, 64),
    embedFields: ['title'],
    index: { efSearch: 32, sealThreshold: 512 },
  });
  const plain: PluresDB = await PluresDB.open('plain');
  const name: string = db.name;
  const actor: string = db.actorId;
  const kind: string = db.storageKind;

  await db.put('a', { title: 'hello', n: 1 });
  await db.putMany([['b', { n: 2 }], { id: 'c', data: { n: 3 } }, ['d', 4, [1, 0]], { id: 'e', data: 5, vector: new Float32Array([0, 1]) }]);
  const value: unknown = await db.get('a');
  const deleted: boolean = await db.delete('b');
  const page: ListPage = await db.list({ prefix: '', limit: 10 });
  const all: ListPage = await db.list();
  const next: string | null = page.nextCursor;
  const query: Query = { where: { n: { $gte: 1 }, title: 'hello' }, sort: ['-n', { field: 'title', order: 'asc' }], limit: 5 };
  const found: Array<{ id: string; data: unknown }> = await db.query(query);
  const conflicts: ConflictVersion[] = await db.conflicts('a');
  await plain.putWithEmbedding('v', { x: 1 }, new Float32Array([1, 0, 0]));
  await plain.putWithEmbedding('w', { x: 2 }, [0, 1, 0]);
  const hits: SearchHit[] = await plain.search([1, 0, 0], { k: 2, minScore: 0.1, filter: { where: { x: 1 } }, ef: 16 });
  const textHits: SearchHit[] = await db.search('hello');
  const stats: IndexStats = plain.indexStats();
  await plain.flushIndex();
  const unsubscribe: () => void = db.subscribe((event: ChangeEvent) => {
    const k: 'upsert' | 'delete' | 'peer-connected' | 'peer-disconnected' = event.kind;
    void k;
  });
  const unwatch: () => void = db.watch({ prefix: 'a' }, (records) => {
    const first: string | undefined = records[0]?.id;
    void first;
  });
  const invite: string = await db.createInvite();
  db.sync('ws://127.0.0.1:9/relay');
  const custom: SyncTransport = {
    name: 'loopback',
    async connect(topic, events): Promise<SyncTransportLink> {
      const length: number = topic.byteLength;
      events.member(true, 1, length > 0 ? 1 : 0);
      return { send: (envelope, keep: boolean) => events.envelope(envelope, 1), close: () => events.closed('done') };
    },
  };
  db.sync(custom);
  const swarm = {} as HyperswarmLike;
  db.sync(hyperswarmTransport(swarm, { server: true, client: false }));
  // @ts-expect-error a transport needs a connect method
  db.sync({ name: 'no connect' });
  const status: SyncStatus = db.syncStatus();
  const state: 'offline' | 'connecting' | 'syncing' | 'synced' | 'stopped' = status.state;
  const risk: 'low' | 'high' | 'unknown' = status.evictionRisk;
  const storage: StorageStatus = await db.storageStatus();
  const persisted: boolean | null = storage.persisted;
  const room: number | null = storage.quota;
  const relaxed = await PluresDB.open('relaxed', { durability: 'relaxed', persist: false });
  await relaxed.close();
  const early = await PluresDB.open('early', { loadInBackground: true });
  const loading: Promise<void> = early.loaded;
  const first: unknown = await early.get('a');
  await loading;
  await early.close();
  void first;
  const loadingError: PluresDBErrorName = 'LoadingError';
  void loadingError;
  db.stopSync();
  unsubscribe();
  unwatch();
  try {
    await db.put('', 1);
  } catch (error) {
    const named = (error as PluresDBError).name;
    void named;
  }
  await db.close();
  await plain.destroy();
  const vectors: Float32Array[] = hashEmbed(['a', 'b']);

  // @ts-expect-error ids are strings
  await db.put(1, {});
  // @ts-expect-error storage is 'indexeddb' or 'memory'
  await PluresDB.open('x', { storage: 'floppy' });
  // @ts-expect-error sort orders are 'asc' or 'desc'
  await db.query({ sort: { field: 'n', order: 'up' } });
  // @ts-expect-error k is a number
  await db.search([1], { k: '10' });
  // @ts-expect-error syncStatus is synchronous
  await db.syncStatus().then(() => {});

  void [name, actor, kind, value, deleted, all, next, found, conflicts, hits, textHits, stats, invite, state, vectors];
}

// pluresdb/worker: the same API with the database in a Worker.
import { openInWorker, type WorkerDB } from '../../pkg/worker.js';

export async function inWorker(): Promise<number> {
  const db: WorkerDB = await openInWorker('types-worker', { embedder: 'hash', embedderDimension: 64 });
  await db.put('a', { text: 'x' });
  const hits: SearchHit[] = await db.search('x', { k: 1 });
  const status: SyncStatus = await db.syncStatus();
  const stop: () => void = db.watch({ prefix: 'a' }, (records) => records.length);
  stop();
  await db.close();
  // @ts-expect-error functions cannot cross to a worker
  await openInWorker('bad', { embedder: (texts: string[]) => texts.map(() => [0]) });
  return hits.length + status.peers;
}

// The Node entry: the same class, the native addon's options, and `backend`.
import { PluresDB as NodePluresDB, backend, type HyperswarmSyncOptions } from '../../pkg/node.js';

export async function inNode(): Promise<string> {
  const db = await NodePluresDB.open('types-node', { path: '/tmp/types-node.db', storage: 'sqlite' });
  const swarm: HyperswarmSyncOptions = { hyperswarm: { bootstrap: ['127.0.0.1:49737'], bind: '127.0.0.1:0' } };
  db.sync(swarm);
  const storage: 'indexeddb' | 'sqlite' | 'memory' = (await db.storageStatus()).storage;
  const which: 'native' | 'wasm' = backend;
  // @ts-expect-error a bootstrap node is a string
  db.sync({ hyperswarm: { bootstrap: [49737] } });
  await db.close();
  return `${which} ${storage}`;
}
