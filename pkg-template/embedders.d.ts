/** A built-in embedder: texts to unit-length vectors. */
export interface BuiltInEmbedder {
  (texts: string[]): Promise<Float32Array[]>;
  /** Name and version, e.g. `'minilm-static@1'`. */
  readonly modelName: string;
  /** The vectors' dimension. */
  readonly dimension: number;
}

/** Download progress of a model's files, in bytes (`total` when the server says). */
export interface ModelProgress {
  loaded: number;
  total?: number;
}

/** The name of the static model distilled from all-MiniLM-L6-v2 (256 dimensions). */
export const STATIC_MODEL: 'minilm-static';

/** The name of all-MiniLM-L6-v2 itself, the transformer (384 dimensions). */
export const EXACT_MODEL: 'minilm';

/**
 * Loads a built-in model (once per page or worker) from the package's
 * `models/` directory, or from `options.url` (a directory URL ending in `/`).
 */
export function loadEmbedder(
  name?: 'minilm-static' | 'minilm',
  options?: { url?: string | URL; onProgress?: (progress: ModelProgress) => void },
): Promise<BuiltInEmbedder>;
