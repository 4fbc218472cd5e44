// Shared helpers for the browser benchmark pages.

/** Median, min and max of a list of numbers. */
export function stats(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  return { median, min: sorted[0], max: sorted[sorted.length - 1], runs: values.length };
}

/** Runs `fn` `runs` times (after `warmup` unmeasured runs); resolves to stats of its durations in ms. */
export async function measure(runs, fn, { warmup = 1, setup } = {}) {
  const times = [];
  for (let i = 0; i < warmup + runs; i++) {
    const context = setup ? await setup(i) : undefined;
    const start = performance.now();
    await fn(context, i);
    const elapsed = performance.now() - start;
    if (i >= warmup) times.push(elapsed);
  }
  return stats(times);
}

/** Deterministic pseudo-random numbers (xorshift32). */
export function rng(seed = 42) {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 4294967296;
  };
}

const WORDS = ('lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ' +
  'incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ' +
  'ullamco laboris nisi aliquip ex ea commodo consequat').split(' ');

/** `count` JSON documents of about 1 KB each, identical for every database. */
export function documents(count, seed = 7) {
  const random = rng(seed);
  const out = [];
  for (let i = 0; i < count; i++) {
    const words = [];
    let length = 0;
    while (length < 880) {
      const word = WORDS[Math.floor(random() * WORDS.length)];
      words.push(word);
      length += word.length + 1;
    }
    out.push({
      id: `doc:${String(i).padStart(6, '0')}`,
      title: `Document ${i}`,
      category: `c${i % 10}`,
      n: i,
      score: Math.floor(random() * 1000),
      tags: [WORDS[i % WORDS.length], WORDS[(i * 7) % WORDS.length]],
      body: words.join(' '),
    });
  }
  return out;
}

/** Deletes an IndexedDB database (resolves even when blocked). */
export function deleteIdb(name) {
  return new Promise((resolve, reject) => {
    const request = indexedDB.deleteDatabase(name);
    request.onsuccess = () => resolve();
    request.onerror = () => reject(request.error);
    request.onblocked = () => resolve();
  });
}

export function idbRequest(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export function idbDone(transaction) {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve();
    transaction.onabort = () => reject(transaction.error);
    transaction.onerror = () => reject(transaction.error);
  });
}
