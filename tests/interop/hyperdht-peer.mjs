// One stock HyperDHT peer (npm `hyperdht`), for tests/hyperswarm_nat.rs,
// which runs it inside a network namespace behind a NAT:
//   node hyperdht-peer.mjs <bootstrap host:port,...> listen <seed>
//     runs a server for the seed's key pair that echoes every message as
//     "echo:" + message; prints `listening`, then `connection` with the
//     node's punch stats for each client
//   node hyperdht-peer.mjs <bootstrap host:port,...> connect <public-key> [count]
//     connects (count times, one after the other), sends "hello", prints
//     the reply, the time from connect to it and the punch stats as `data`
//     (or `error`) for each, and exits
//   node hyperdht-peer.mjs <bootstrap host:port,...> relay <seed>
//     runs a stock blind relay (npm `blind-relay`) for the seed's key pair;
//     prints `relaying`
// With RELAY_THROUGH=<public key hex> in the environment, the server or the
// client names that blind relay (`relayThrough`). Events carry the node's
// `relaying` stats.
// Prints one JSON object per line.
import DHT from 'hyperdht';
import { startStockBlindRelay } from './stock-blind-relay.mjs';

import { argument, bootstrap, command, print, relayThrough } from './peer-args.mjs';
// A relay must be reachable: it says so at once instead of waiting for
// dht-rpc's adaptive check (it runs on the public network).
const node = new DHT({ bootstrap, ...(command === 'relay' ? { firewalled: false } : {}) });
await node.fullyBootstrapped();

if (command === 'listen') {
  const keyPair = DHT.keyPair(Buffer.from(argument, 'hex'));
  const server = node.createServer({ relayThrough }, (socket) => {
    print({
      event: 'connection',
      punches: { ...node.stats.punches },
      relaying: { ...node.stats.relaying },
      firewalled: node.firewalled,
    });
    socket.on('data', (data) => socket.write(Buffer.concat([Buffer.from('echo:'), data])));
    socket.on('end', () => socket.end());
    socket.on('error', () => {});
  });
  await server.listen(keyPair);
  print({ event: 'listening', publicKey: keyPair.publicKey.toString('hex'), firewalled: node.firewalled });
} else if (command === 'connect') {
  // `connect <key> [count]`: that many connections one after the other.
  const count = Number(process.argv[5] || 1);
  for (let i = 0; i < count; i++) print(await connectOnce(Buffer.from(argument, 'hex')));
  await node.destroy();
  process.exit(0);
} else if (command === 'relay') {
  const publicKey = await startStockBlindRelay(node, argument);
  print({ event: 'relaying', publicKey, firewalled: node.firewalled });
} else {
  throw new Error(`unknown command ${command}`);
}

/** One connection, timed from `connect` to the echo of a first message. */
function connectOnce(publicKey) {
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = node.connect(publicKey, { relayThrough });
    socket.on('open', () => socket.write(Buffer.from('hello')));
    socket.once('data', (data) => {
      resolve({
        event: 'data',
        text: data.toString(),
        ms: Date.now() - started,
        punches: { ...node.stats.punches },
        relaying: { ...node.stats.relaying },
        firewalled: node.firewalled,
      });
      socket.end();
    });
    socket.on('error', (error) => resolve({ event: 'error', message: error.message, code: error.code }));
  });
}
