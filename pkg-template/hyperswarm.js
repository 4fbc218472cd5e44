// `pluresdb/hyperswarm`: sync a PluresDB over the npm `hyperswarm` (Node),
// with native `pluresdb sync --hyperswarm` peers and other Node processes.
//
//   import Hyperswarm from 'hyperswarm';
//   import { PluresDB } from 'pluresdb';
//   import { hyperswarmTransport } from 'pluresdb/hyperswarm';
//
//   const db = await PluresDB.open('notes', { storage: 'memory', invite });
//   db.sync(hyperswarmTransport(new Hyperswarm()));
//
// The swarm joins the database's sync topic (a hash of its join key, the
// relay's topic too) as client and server. Each Hyperswarm connection
// carries sealed sync envelopes, one per secret-stream message, exactly as
// the native transport does; an empty message is a keep-alive. Hyperswarm
// keeps one connection per pair of peers. Envelopes go to directly
// connected peers only and are never forwarded, so nothing loops; every new
// peer gets the session's hello so the two exchange what the other lacks.
//
// Hyperswarm looks a topic up when it joins and then every ten minutes, so
// two replicas that join at the same moment can miss each other; while a
// session has no peer, the transport looks again every few seconds.
//
// Hand the transport a swarm of its own: every connection the swarm makes
// is treated as a replica of this database. `db.stopSync()` leaves the
// topic but not the swarm's open connections; destroy the swarm to
// disconnect.

const noop = () => {};

/**
 * A `SyncTransport` over a Hyperswarm instance.
 * @param {import('hyperswarm')} swarm
 * @param {{ server?: boolean, client?: boolean, lookupWhileAlone?: number }} [options]
 *   `lookupWhileAlone`: milliseconds between lookups while no peer is
 *   connected (default 5000; 0 leaves it to Hyperswarm's own schedule).
 */
export function hyperswarmTransport(swarm, options = {}) {
  if (!swarm || typeof swarm.join !== 'function' || typeof swarm.on !== 'function') {
    throw new TypeError('hyperswarmTransport needs a Hyperswarm instance (new Hyperswarm())');
  }
  const server = options.server ?? true;
  const client = options.client ?? true;
  const lookupWhileAlone = options.lookupWhileAlone ?? 5000;
  if (!Number.isFinite(lookupWhileAlone) || lookupWhileAlone < 0) {
    throw new TypeError('lookupWhileAlone must be a number of milliseconds (0 to turn it off)');
  }
  return {
    name: 'hyperswarm',
    async connect(topic, events) {
      if (!(topic instanceof Uint8Array) || topic.byteLength !== 32) {
        throw new TypeError('the sync topic must be 32 bytes');
      }
      const session = new Session(swarm, events);
      await session.join(Buffer.from(topic), { server, client, lookupWhileAlone });
      return session;
    },
  };
}

/** One sync session: the topic joined and the connections it carries. */
class Session {
  constructor(swarm, events) {
    this.swarm = swarm;
    this.events = events;
    this.peers = new Map(); // connection -> { id, ondata, onclose }
    this.nextId = 0;
    this.hello = null;
    this.closed = false;
    this.discovery = null;
    this.lookups = null;
    this.onconnection = (connection) => this.add(connection);
  }

  async join(topic, { server, client, lookupWhileAlone }) {
    this.swarm.on('connection', this.onconnection);
    for (const connection of this.swarm.connections) this.add(connection);
    this.discovery = this.swarm.join(topic, { server, client });
    if (client && lookupWhileAlone > 0) {
      this.lookups = setInterval(() => {
        if (!this.closed && this.peers.size === 0) this.discovery.refresh().catch(noop);
      }, lookupWhileAlone);
      this.lookups.unref?.();
    }
    try {
      // Announced (as a server) before the session counts as connected.
      if (server) await this.discovery.flushed();
    } catch (error) {
      this.close();
      throw error;
    }
  }

  add(connection) {
    if (this.closed || this.peers.has(connection)) return;
    const id = ++this.nextId;
    const ondata = (data) => {
      if (this.closed || data.byteLength === 0) return; // keep-alive
      this.events.envelope(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), id);
    };
    const onclose = () => {
      if (!this.peers.delete(connection) || this.closed) return;
      this.events.member(false, id, this.peers.size);
    };
    connection.on('error', noop); // reported as 'close'; never crash the process
    connection.on('data', ondata);
    connection.on('close', onclose);
    this.peers.set(connection, { id, ondata, onclose });
    if (this.hello) connection.write(this.hello);
    this.events.member(true, id, this.peers.size);
  }

  send(envelope, keep) {
    if (this.closed) throw new Error('the hyperswarm sync session is closed');
    const message = Buffer.from(envelope); // a copy, owned by the streams
    if (this.hello === null) this.hello = message;
    for (const connection of this.peers.keys()) connection.write(message);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.lookups);
    this.swarm.removeListener('connection', this.onconnection);
    for (const [connection, { ondata, onclose }] of this.peers) {
      connection.removeListener('data', ondata);
      connection.removeListener('close', onclose);
    }
    this.peers.clear();
    if (this.discovery) this.discovery.destroy().catch(noop);
  }
}
