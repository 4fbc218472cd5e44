// A stock HyperDHT testnet (hyperdht/testnet, which runs the npm dht-rpc
// underneath), driven by tests/hyperswarm_interop.rs and tests/hyperswarm_nat.rs.
// Usage: node dht-testnet.mjs [size] [host]; host defaults to 127.0.0.1.
// Prints one JSON object per line; reads commands from stdin:
//   ping <port>              a testnet node pings 127.0.0.1:<port>
//   lookup <topic>           a fresh client looks the topic up; prints the public keys found
//   announce <topic> <seed>  a client announces the seed's key pair under the topic
//   listen <seed> [firewalled]
//                            a client runs a HyperDHT server for the seed's key pair that
//                            echoes every message as "echo:" + message; prints
//                            `connection` events with the node's punch stats
//   connect <public-key> [firewalled]
//                            a client connects to that server, sends "hello from node",
//                            prints the first message it gets back (and its punch
//                            stats), and ends
//   (`firewalled`: the client node skips dht-rpc's quick reachability test, so it
//   stays firewalled and holepunches even on loopback, as hyperdht's own tests do;
//   `relay=<public-key>`: the server or client names that blind relay
//   (`relayThrough`). Connection events carry the node's `relaying` stats too.)
//   relay <seed>             a stock blind relay (npm `blind-relay` on a HyperDHT server)
//                            for the seed's key pair; prints `relaying` with its key
//   forget <topic> <key>     every testnet node drops the key's record under the topic
//                            (as if it had expired)
//   quit                     tears the testnet down
import createTestnet from 'hyperdht/testnet.js';
import DHT from 'hyperdht';
import readline from 'node:readline';
import { startStockBlindRelay } from './stock-blind-relay.mjs';
import { createRequire } from 'node:module';

// dht-rpc's own id function (BLAKE2b-256 of the compact address).
const { id: nodeId } = createRequire(import.meta.url)('dht-rpc/lib/peer.js');

const size = Number(process.argv[2] || 5);
// The address the nodes are reached at (argv[3]; they bind all interfaces
// unless it is loopback): the NAT tests run the testnet in a "public"
// network namespace.
const host = process.argv[3] || '127.0.0.1';
const print = (value) => process.stdout.write(JSON.stringify(value) + '\n');
const testnet = await createTestnet(size, { host });

print({
  event: 'ready',
  bootstrap: testnet.bootstrap.map(({ host, port }) => `${host}:${port}`),
  nodes: testnet.nodes.map((node) => ({ port: node.address().port, id: nodeId(host, node.address().port).toString('hex') })),
});

const keep = [];
// `firewalled` and `relay=<key>` after a command: see the header.
const words = (line) => line.trim().split(/\s+/);
const nodeOptions = (line) => (words(line).includes('firewalled') ? { quickFirewall: false } : {});
const relayThrough = (line) => {
  const named = words(line).find((word) => word.startsWith('relay='));
  return named ? Buffer.from(named.slice('relay='.length), 'hex') : null;
};

for await (const line of readline.createInterface({ input: process.stdin })) {
  const [command, argument] = line.trim().split(/\s+/);
  if (command === 'ping') {
    try {
      const reply = await testnet.nodes[0].ping({ host: '127.0.0.1', port: Number(argument) });
      print({ event: 'pinged', ok: true, from: `${reply.from.host}:${reply.from.port}`, ephemeral: reply.from.id === null });
    } catch (error) {
      print({ event: 'pinged', ok: false, message: error.message });
    }
  } else if (command === 'lookup') {
    const client = testnet.createNode();
    const found = new Set();
    for await (const reply of client.lookup(Buffer.from(argument, 'hex'))) {
      for (const peer of reply.peers) found.add(peer.publicKey.toString('hex'));
    }
    print({ event: 'lookup', publicKeys: [...found] });
    await client.destroy();
  } else if (command === 'announce') {
    const seed = line.trim().split(/\s+/)[2];
    const client = testnet.createNode();
    keep.push(client);
    const keyPair = DHT.keyPair(Buffer.from(seed, 'hex'));
    await client.announce(Buffer.from(argument, 'hex'), keyPair).finished();
    print({ event: 'announced', publicKey: keyPair.publicKey.toString('hex') });
  } else if (command === 'listen') {
    const client = testnet.createNode(nodeOptions(line));
    keep.push(client);
    const keyPair = DHT.keyPair(Buffer.from(argument, 'hex'));
    const server = client.createServer({ relayThrough: relayThrough(line) }, (socket) => {
      print({ event: 'connection', punches: { ...client.stats.punches }, relaying: { ...client.stats.relaying } });
      socket.on('data', (data) => socket.write(Buffer.concat([Buffer.from('echo:'), data])));
      socket.on('end', () => socket.end());
      socket.on('error', () => {});
    });
    await server.listen(keyPair);
    print({ event: 'listening', publicKey: keyPair.publicKey.toString('hex') });
  } else if (command === 'connect') {
    const client = testnet.createNode(nodeOptions(line));
    keep.push(client);
    const socket = client.connect(Buffer.from(argument, 'hex'), { relayThrough: relayThrough(line) });
    socket.on('open', () => socket.write(Buffer.from('hello from node')));
    socket.once('data', (data) => {
      print({
        event: 'data',
        text: data.toString(),
        remotePublicKey: socket.remotePublicKey.toString('hex'),
        punches: { ...client.stats.punches },
        relaying: { ...client.stats.relaying },
      });
      socket.end();
    });
    socket.on('error', (error) => print({ event: 'error', message: error.message }));
  } else if (command === 'relay') {
    // Reachable at once (a relay must be), without dht-rpc's adaptive wait.
    const node = testnet.createNode({ firewalled: false });
    keep.push(node);
    print({ event: 'relaying', publicKey: await startStockBlindRelay(node, argument) });
  } else if (command === 'forget') {
    const publicKey = Buffer.from(line.trim().split(/\s+/)[2], 'hex');
    let dropped = 0;
    for (const node of testnet.nodes) {
      const records = node._persistent?.records;
      if (!records) continue;
      const before = records.get(argument, 20).length;
      records.remove(argument, publicKey);
      dropped += before - records.get(argument, 20).length;
    }
    print({ event: 'forgot', dropped });
  } else if (command === 'quit') {
    break;
  }
}
for (const client of keep) await client.destroy();
await testnet.destroy();
print({ event: 'closed' });
process.exit(0);
