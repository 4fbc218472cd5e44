// Types of `pluresdb/worker`: the PluresDB API with the database in a
// dedicated Worker. Synchronous methods of `PluresDB` return promises here.
import type {
  ChangeEvent, ConflictVersion, IndexStats, ListOptions, ListPage, OpenOptions, PutEntry, Query, QueryPlan,
  SearchHit, SearchOptions, StoredRecord, SyncStatus,
} from './pluresdb.js';

/** `OpenOptions`, with the built-in embedder chosen by name. */
export interface WorkerOpenOptions extends Omit<OpenOptions, 'embedder' | 'onEmbedderProgress' | 'loadInBackground'> {
  /**
   * A built-in embedder by name, run in the worker (functions cannot cross
   * to a worker): `'minilm-static'` (meaning) or `'hash'` (words).
   */
  embedder?: 'hash' | 'minilm-static';
  /** The dimension of the built-in embedder (256 by default). */
  embedderDimension?: number;
}

/** A database running in a dedicated Worker. */
export interface WorkerDB {
  readonly name: string;
  readonly actorId: string;
  readonly storageKind: string;
  readonly worker: Worker;
  put(id: string, data: unknown): Promise<void>;
  putMany(entries: Array<PutEntry>): Promise<void>;
  get<T = unknown>(id: string): Promise<T | undefined>;
  delete(id: string): Promise<boolean>;
  list<T = unknown>(options?: ListOptions): Promise<ListPage<T>>;
  query<T = unknown>(query: Query): Promise<Array<StoredRecord<T>>>;
  explain(query: Query): Promise<QueryPlan>;
  conflicts(id: string): Promise<ConflictVersion[]>;
  search<T = unknown>(query: string | Float32Array | number[], options?: SearchOptions): Promise<Array<SearchHit<T>>>;
  putWithEmbedding(id: string, data: unknown, vector: Float32Array | number[]): Promise<void>;
  indexStats(): Promise<IndexStats>;
  flushIndex(): Promise<void>;
  createInvite(): Promise<string>;
  sync(relayUrl: string): Promise<void>;
  stopSync(): Promise<void>;
  syncStatus(): Promise<SyncStatus>;
  watch<T = unknown>(query: Query, callback: (records: Array<StoredRecord<T>>) => void): () => void;
  subscribe(listener: (event: ChangeEvent) => void): () => void;
  close(): Promise<void>;
  destroy(): Promise<void>;
}

/** Opens `name` in a new dedicated Worker. */
export function openInWorker(name: string, options?: WorkerOpenOptions): Promise<WorkerDB>;
