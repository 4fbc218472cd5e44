// A stock blind relay (npm `blind-relay` on a HyperDHT server), shared by
// dht-testnet.mjs and hyperdht-peer.mjs: serves the seed's key pair on
// `node` (which must be reachable) and resolves to the relay's public key.
import DHT from 'hyperdht';
import BlindRelay from 'blind-relay';

export async function startStockBlindRelay(node, seedHex) {
  const relay = new BlindRelay.Server({ createStream: (options) => node.createRawStream(options) });
  const server = node.createServer((socket) => {
    socket.on('error', () => {});
    relay.accept(socket, { id: socket.remotePublicKey }).on('error', () => {});
  });
  const keyPair = DHT.keyPair(Buffer.from(seedHex, 'hex'));
  await server.listen(keyPair);
  return keyPair.publicKey.toString('hex');
}
