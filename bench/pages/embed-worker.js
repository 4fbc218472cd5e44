// One run of the browser embedding benchmark, in a fresh Worker: time to
// load each built-in model (the package's files over HTTP, decoded), then
// sentences per second for it, and for the hash embedder.
import init, { hashEmbed } from '/pkg/pluresdb.js';

self.onmessage = async ({ data: { sentences, exactCount } }) => {
  try {
    const start = performance.now();
    const { loadEmbedder } = await import('/pkg/embedders.js');
    const embed = await loadEmbedder('minilm-static');
    const readyMs = performance.now() - start;
    await embed(sentences.slice(0, 20)); // warm up the JIT
    let t = performance.now();
    await embed(sentences);
    const staticPerSecond = (sentences.length / (performance.now() - t)) * 1000;
    await init();
    hashEmbed(sentences.slice(0, 20), 256);
    t = performance.now();
    hashEmbed(sentences, 256);
    const hashPerSecond = (sentences.length / (performance.now() - t)) * 1000;
    t = performance.now();
    const exact = await loadEmbedder('minilm');
    const exactReadyMs = performance.now() - t;
    await exact(sentences.slice(0, 8));
    const exactSentences = sentences.slice(0, exactCount);
    t = performance.now();
    await exact(exactSentences);
    const exactPerSecond = (exactSentences.length / (performance.now() - t)) * 1000;
    self.postMessage({ readyMs, staticPerSecond, hashPerSecond, exactReadyMs, exactPerSecond, exactCount: exactSentences.length });
  } catch (error) {
    self.postMessage({ error: String(error?.stack ?? error) });
  }
};
