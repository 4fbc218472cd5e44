// A stock @hyperswarm/secret-stream peer over TCP on loopback, driven by
// tests/hyperswarm_interop.rs. Prints one JSON object per line on stdout.
//
//   listen  <seed-hex>                 responder: echoes every message as "echo:" + message
//   connect <port> <seed-hex> <count>  initiator: sends <count> messages, checks the echoes
import net from 'node:net';
import SecretStream from '@hyperswarm/secret-stream';

const [mode, ...args] = process.argv.slice(2);
const print = (value) => process.stdout.write(JSON.stringify(value) + '\n');
const hex = (buffer) => Buffer.from(buffer).toString('hex');

function messageNumber(i) {
  // Sizes that cross TCP segment and frame boundaries, and an empty one.
  if (i === 1) return Buffer.alloc(0);
  if (i === 2) return Buffer.alloc(100_000, 'x');
  return Buffer.from(`message ${i}`);
}

if (mode === 'listen') {
  const keyPair = SecretStream.keyPair(Buffer.from(args[0], 'hex'));
  const server = net.createServer((socket) => {
    const stream = new SecretStream(false, socket, { keyPair });
    let received = 0;
    stream.on('data', (message) => {
      received += 1;
      stream.write(Buffer.concat([Buffer.from('echo:'), message]));
    });
    stream.on('end', () => {
      print({ event: 'ended', remotePublicKey: hex(stream.remotePublicKey), received });
      stream.end();
      server.close();
    });
    stream.on('error', (error) => {
      print({ event: 'error', message: error.message });
      process.exit(1);
    });
  });
  server.listen(0, '127.0.0.1', () => {
    print({ event: 'listening', port: server.address().port, publicKey: hex(keyPair.publicKey) });
  });
} else if (mode === 'connect') {
  const [port, seed, count] = [Number(args[0]), Buffer.from(args[1], 'hex'), Number(args[2])];
  const keyPair = SecretStream.keyPair(seed);
  const socket = net.connect(port, '127.0.0.1');
  const stream = new SecretStream(true, socket, { keyPair });
  const echoes = [];
  stream.on('connect', () => {
    for (let i = 0; i < count; i++) stream.write(messageNumber(i));
  });
  stream.on('data', (message) => {
    echoes.push(message);
    if (echoes.length < count) return;
    const mismatches = echoes.filter((echo, i) => !echo.equals(Buffer.concat([Buffer.from('rust:'), messageNumber(i)])));
    print({
      event: 'done',
      remotePublicKey: hex(stream.remotePublicKey),
      publicKey: hex(keyPair.publicKey),
      echoes: echoes.length,
      mismatches: mismatches.length,
    });
    stream.end();
  });
  stream.on('error', (error) => {
    print({ event: 'error', message: error.message });
    process.exit(1);
  });
} else {
  console.error('usage: secret-stream-peer.mjs listen <seed> | connect <port> <seed> <count>');
  process.exit(2);
}
