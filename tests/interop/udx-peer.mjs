// A stock udx-native peer on loopback, driven by tests/hyperswarm_interop.rs.
// Prints one JSON object per line on stdout.
//
//   udx-peer.mjs <remote-port> raw     echoes the stream's bytes; ends when the peer ends
//   udx-peer.mjs <remote-port> secret  a @hyperswarm/secret-stream responder on the UDX
//                                      stream, echoing each message as "echo:" + message
//
// The Node stream has id 1 and talks to stream id 2 at 127.0.0.1:<remote-port>.
import UDX from 'udx-native';
import SecretStream from '@hyperswarm/secret-stream';

const [remotePort, mode] = [Number(process.argv[2]), process.argv[3]];
const print = (value) => process.stdout.write(JSON.stringify(value) + '\n');

const udx = new UDX();
const socket = udx.createSocket();
socket.bind(0, '127.0.0.1');
const stream = udx.createStream(1);
stream.connect(socket, 2, remotePort, '127.0.0.1');
print({ event: 'listening', port: socket.address().port });

const fail = (error) => {
  print({ event: 'error', message: error.message });
  process.exit(1);
};

if (mode === 'raw') {
  let bytes = 0;
  stream.on('data', (data) => {
    bytes += data.byteLength;
    stream.write(data);
  });
  stream.on('end', () => stream.end());
  stream.on('error', fail);
  stream.on('close', () => {
    print({ event: 'closed', bytes });
    socket.close();
  });
} else if (mode === 'secret') {
  const keyPair = SecretStream.keyPair(Buffer.alloc(32, 11));
  const secret = new SecretStream(false, stream, { keyPair });
  let received = 0;
  secret.on('data', (message) => {
    received += 1;
    secret.write(Buffer.concat([Buffer.from('echo:'), message]));
  });
  secret.on('end', () => secret.end());
  secret.on('error', fail);
  secret.on('close', () => {
    print({ event: 'closed', received, remotePublicKey: secret.remotePublicKey.toString('hex') });
    socket.close();
  });
} else {
  console.error('usage: udx-peer.mjs <remote-port> raw|secret');
  process.exit(2);
}
