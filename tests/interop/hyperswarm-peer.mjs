// One stock npm `hyperswarm` peer, for tests/hyperswarm_nat.rs (run inside a
// network namespace behind a NAT), like hyperdht-peer.mjs one layer up:
//   node hyperswarm-peer.mjs <bootstrap host:port,...> listen <seed>
//     a swarm with the seed's key pair listens (swarm.listen()) and echoes
//     every message as "echo:" + message; prints `listening`, then
//     `connection` for each peer
//   node hyperswarm-peer.mjs <bootstrap host:port,...> connect <public-key>
//     a swarm dials that peer (swarm.joinPeer), sends "hello", prints the
//     reply and the time from joinPeer to it as `data`, and exits
// With RELAY_THROUGH=<public key hex>, the swarm names that blind relay
// (`relayThrough`: Hyperswarm uses it when its NAT randomizes ports or a
// connection failed in a way a relay can fix). Events carry the DHT's punch
// and relay stats. Prints one JSON object per line.
import Hyperswarm from 'hyperswarm';
import DHT from 'hyperdht';

import { argument, bootstrap, command, print, relayThrough } from './peer-args.mjs';
const keyPair = command === 'listen' ? DHT.keyPair(Buffer.from(argument, 'hex')) : DHT.keyPair();
const swarm = new Hyperswarm({ bootstrap, keyPair, relayThrough });
const stats = () => ({
  punches: { ...swarm.dht.stats.punches },
  relaying: { ...swarm.dht.stats.relaying },
  firewalled: swarm.dht.firewalled,
});

if (command === 'listen') {
  swarm.on('connection', (socket) => {
    print({ event: 'connection', ...stats() });
    socket.on('data', (data) => socket.write(Buffer.concat([Buffer.from('echo:'), data])));
    socket.on('end', () => socket.end());
    socket.on('error', () => {});
  });
  await swarm.listen();
  print({ event: 'listening', publicKey: keyPair.publicKey.toString('hex'), ...stats() });
} else if (command === 'connect') {
  await swarm.dht.fullyBootstrapped();
  const started = Date.now();
  swarm.on('connection', (socket) => {
    socket.on('error', () => {});
    socket.once('data', async (data) => {
      print({ event: 'data', text: data.toString(), ms: Date.now() - started, ...stats() });
      await swarm.destroy();
      process.exit(0);
    });
    socket.write(Buffer.from('hello'));
  });
  swarm.joinPeer(Buffer.from(argument, 'hex'));
} else {
  throw new Error(`unknown command ${command}`);
}
