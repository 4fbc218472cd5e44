// Native benchmarks: runs the criterion benches and reads their samples
// (target/criterion/**/new/sample.json) into median/min/max per iteration.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

function stats(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  return { median, min: sorted[0], max: sorted[sorted.length - 1], runs: values.length };
}

function collect(dir, out = []) {
  if (!existsSync(dir)) return out;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name === 'report') continue;
    const path = join(dir, entry.name);
    const benchmark = join(path, 'new', 'benchmark.json');
    if (existsSync(benchmark)) out.push(path);
    else collect(path, out);
  }
  return out;
}

/** Runs `cargo bench` for `benches` and returns { "<group>/<function>": stats in ms, throughput }. */
export function runCriterion(root, benches) {
  const args = ['bench', '--quiet'];
  for (const bench of benches) args.push('--bench', bench);
  args.push('--', '--noplot');
  console.log(`bench: cargo ${args.join(' ')}`);
  execFileSync('cargo', args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  const results = {};
  for (const path of collect(join(root, 'target', 'criterion'))) {
    const meta = JSON.parse(readFileSync(join(path, 'new', 'benchmark.json'), 'utf8'));
    const sample = JSON.parse(readFileSync(join(path, 'new', 'sample.json'), 'utf8'));
    const perIteration = sample.times.map((t, i) => t / sample.iters[i] / 1e6);
    results[meta.full_id] = {
      ...stats(perIteration),
      elements: meta.throughput?.Elements ?? null,
    };
  }
  return results;
}
