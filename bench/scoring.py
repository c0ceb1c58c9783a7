"""Time of the offline scoring stage per article, by instrument, on the bundled slice (full-length
news articles), and the projection to the paper's 1,518 articles.

    python bench/scoring.py [--articles 90] [--threads 2]
"""

import argparse
import time

import torch

from biasamp.config import ModelConfig
from biasamp.stages.corpus import read_source
from biasamp.models import load_base_model, load_tokenizer
from biasamp.instruments.hf import leaning, load_classifier
from biasamp.stages.score import perplexities
from biasamp.instruments.quality import quality_index
from biasamp.text import training_text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--articles", type=int, default=90)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    df = read_source("bundled").head(args.articles)
    full = [training_text(t, b) for t, b in zip(df["title"], df["text"])]
    clf = load_classifier("offline", "bundled", {}, 0, ModelConfig(), "classifier")
    proxy = load_classifier("offline", "bundled", {}, 0, ModelConfig(), "quality")
    smol = ModelConfig(kind="gguf", name="smollm2")
    tok = load_tokenizer(smol)
    lm = load_base_model(smol, len(tok)).eval()
    timings = {}
    for name, fn in [("leaning (TF-IDF + LR, whole article)", lambda: leaning(clf, full, 16)),
                     ("quality proxy (all sentences)", lambda: quality_index(proxy, list(df["text"]), 0)),
                     ("perplexity, SmolLM2-135M, 512 tokens", lambda: perplexities(lm, tok, full, 512, 8))]:
        t = time.perf_counter()
        fn()
        timings[name] = (time.perf_counter() - t) / len(df)
    print(f"{len(df)} articles, {args.threads} threads")
    for name, s in timings.items():
        print(f"{name:42} {s * 1000:8.1f} ms/article   1,518 articles: {s * 1518 / 60:5.1f} min")


if __name__ == "__main__":
    main()
