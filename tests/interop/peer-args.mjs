// The command line and environment both Node peers of tests/hyperswarm_nat.rs
// share: `<bootstrap host:port,...> <command> <argument>`, RELAY_THROUGH=<hex>
// (the blind relay the peer names), and one JSON event per output line.
const [bootstrapList, command, argument] = process.argv.slice(2);

export { command, argument };
export const bootstrap = bootstrapList.split(',').map((address) => {
  const [host, port] = address.split(':');
  return { host, port: Number(port) };
});
export const relayThrough = process.env.RELAY_THROUGH ? Buffer.from(process.env.RELAY_THROUGH, 'hex') : null;
export const print = (value) => process.stdout.write(JSON.stringify(value) + '\n');
