// Types of `pluresdb/hyperswarm`: sync a PluresDB over the npm `hyperswarm`.
import type { SyncTransport } from './pluresdb.js';

/** Which sides of the topic the swarm joins (both by default). */
export interface HyperswarmTransportOptions {
  /** Announce the topic and accept connections (default true). */
  server?: boolean;
  /** Look the topic up and dial the peers found (default true). */
  client?: boolean;
  /**
   * Milliseconds between lookups while no peer is connected (default 5000;
   * 0 leaves it to Hyperswarm, which looks again every ten minutes).
   */
  lookupWhileAlone?: number;
}

/** The parts of a `Hyperswarm` instance the transport uses. */
export interface HyperswarmLike {
  join(topic: Uint8Array, options?: { server?: boolean; client?: boolean }): {
    flushed(): Promise<unknown>;
    refresh(): Promise<unknown>;
    destroy(): Promise<unknown>;
  };
  on(event: 'connection', listener: (connection: any, info: any) => void): unknown;
  removeListener(event: 'connection', listener: (connection: any, info: any) => void): unknown;
  readonly connections: Iterable<any>;
}

/**
 * A `SyncTransport` carrying the database's sealed envelopes over `swarm`:
 * `db.sync(hyperswarmTransport(new Hyperswarm()))`. Give it a swarm of its
 * own: every connection the swarm makes is treated as a replica.
 */
export function hyperswarmTransport(swarm: HyperswarmLike, options?: HyperswarmTransportOptions): SyncTransport;
