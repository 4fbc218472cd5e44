// An idle Hyperswarm peer for the idle suite (bench/suites/idle.mjs).
//   node hyperswarm-peer.mjs plain <bootstrap host:port> <topic hex>
//       a stock npm hyperswarm joined to the topic, nothing else
//   node hyperswarm-peer.mjs pluresdb <bootstrap host:port> [invite]
//       a PluresDB in memory syncing through pluresdb/hyperswarm
//       (creates the database and prints its invite when none is given)
// Prints one JSON line per event: {"event":"invite"} and {"event":"connected"}.
import Hyperswarm from 'hyperswarm';
import DHT from 'hyperdht';
import init, { PluresDB } from '../../pkg/node.js';
import { hyperswarmTransport } from '../../pkg/hyperswarm.js';

const [mode, bootstrapArg, extra] = process.argv.slice(2);
const [host, port] = bootstrapArg.split(':');
const print = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const swarm = new Hyperswarm({
  dht: new DHT({ bootstrap: [{ host, port: Number(port) }], host: '127.0.0.1', ephemeral: true }),
});

if (mode === 'plain') {
  swarm.on('connection', (connection) => {
    connection.on('error', () => {});
    print({ event: 'connected' });
  });
  swarm.join(Buffer.from(extra, 'hex'), { server: true, client: true });
} else if (mode === 'pluresdb') {
  await init();
  const db = await PluresDB.open('idle', { storage: 'memory', ...(extra ? { invite: extra } : {}) });
  if (!extra) print({ event: 'invite', invite: await db.createInvite() });
  await db.put(`written-by-${process.pid}`, { pid: process.pid });
  db.sync(hyperswarmTransport(swarm));
  const poll = setInterval(() => {
    if (db.syncStatus().peers > 0) {
      clearInterval(poll);
      print({ event: 'connected' });
    }
  }, 200);
} else {
  console.error('usage: hyperswarm-peer.mjs plain|pluresdb <bootstrap> <topic|invite>');
  process.exit(2);
}
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
