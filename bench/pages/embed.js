// Embedding benchmark in the browser: each run starts a fresh dedicated
// Worker (a fresh module, nothing loaded), which loads the built-in model
// from the package as an app would, then embeds the sentences. See
// embed-worker.js.
function inWorker(message) {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./embed-worker.js', import.meta.url), { type: 'module' });
    worker.onmessage = ({ data }) => {
      worker.terminate();
      if (data.error) reject(new Error(data.error));
      else resolve(data);
    };
    worker.onerror = (event) => reject(new Error(event.message));
    worker.postMessage(message);
  });
}

export async function run({ count = 1000, runs = 5, exactCount = count } = {}) {
  const text = await (await fetch('/bench/data/corpus.txt')).text();
  const lines = text.split('\n').filter(Boolean);
  const sentences = lines.slice(-count);
  const results = [];
  for (let run = 0; run < runs; run++) results.push(await inWorker({ sentences, exactCount }));
  return { count: sentences.length, runs: results };
}

globalThis.bench = { run };
document.body.dataset.ready = 'true';
