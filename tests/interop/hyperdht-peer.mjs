// One stock HyperDHT peer (npm `hyperdht`), for tests/hyperswarm_nat.rs,
// which runs it inside a network namespace behind a NAT:
//   node hyperdht-peer.mjs <bootstrap host:port,...> listen <seed>
//     runs a server for the seed's key pair that echoes every message as
//     "echo:" + message; prints `listening`, then `connection` with the
//     node's punch stats for each client
//   node hyperdht-peer.mjs <bootstrap host:port,...> connect <public-key>
//     connects, sends "hello", prints the reply and the punch
//     stats as `data` (or `error`), and exits
// Prints one JSON object per line.
import DHT from 'hyperdht';

const [bootstrapList, command, argument] = process.argv.slice(2);
const print = (value) => process.stdout.write(JSON.stringify(value) + '\n');
const bootstrap = bootstrapList.split(',').map((address) => {
  const [host, port] = address.split(':');
  return { host, port: Number(port) };
});
const node = new DHT({ bootstrap });
await node.fullyBootstrapped();

if (command === 'listen') {
  const keyPair = DHT.keyPair(Buffer.from(argument, 'hex'));
  const server = node.createServer((socket) => {
    print({ event: 'connection', punches: { ...node.stats.punches }, firewalled: node.firewalled });
    socket.on('data', (data) => socket.write(Buffer.concat([Buffer.from('echo:'), data])));
    socket.on('end', () => socket.end());
    socket.on('error', () => {});
  });
  await server.listen(keyPair);
  print({ event: 'listening', publicKey: keyPair.publicKey.toString('hex'), firewalled: node.firewalled });
} else if (command === 'connect') {
  const started = Date.now();
  const socket = node.connect(Buffer.from(argument, 'hex'));
  socket.on('open', () => socket.write(Buffer.from('hello')));
  socket.once('data', async (data) => {
    print({
      event: 'data',
      text: data.toString(),
      ms: Date.now() - started,
      punches: { ...node.stats.punches },
      firewalled: node.firewalled,
    });
    socket.end();
    await node.destroy();
    process.exit(0);
  });
  socket.on('error', async (error) => {
    print({ event: 'error', message: error.message, code: error.code });
    await node.destroy();
    process.exit(0);
  });
} else {
  throw new Error(`unknown command ${command}`);
}
