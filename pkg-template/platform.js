// The platform names of the native addon's prebuilt packages, as napi-rs
// spells them: `linux-x64-gnu`, `linux-arm64-musl`, `darwin-arm64`,
// `win32-x64-msvc`, ... (used by node-addon.js and scripts/build.mjs).

/** This process's platform triple. */
export function platformTriple() {
  const { platform, arch } = process;
  if (platform === 'linux') {
    const glibc = process.report?.getReport?.()?.header?.glibcVersionRuntime;
    return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`;
  }
  if (platform === 'win32') return `win32-${arch}-msvc`;
  return `${platform}-${arch}`;
}
