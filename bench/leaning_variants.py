"""Variants of the TF-IDF leaning classifier that were measured and not kept (README, "How good the
offline instruments are"): article macro-F1 on 5 outlet-grouped folds of all of ABP, at most 100
held-out articles per outlet. Each variant is a name on the command line (default: all; ~3 min each).

    python bench/leaning_variants.py [cap300 cap100 unigrams spread10 spread5 spread20]
"""

import sys
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import GroupKFold

from biasamp.config import LABELS
from biasamp.stages.corpus import read_source
from biasamp.text import training_text

BIGRAMS = dict(ngram_range=(1, 2), min_df=3, max_features=200_000, sublinear_tf=True)
UNIGRAMS = dict(ngram_range=(1, 1), min_df=3, max_features=50_000, sublinear_tf=True)
# name: (vectorizer, training articles per outlet, min outlets using a term, max share of one outlet)
VARIANTS = {"cap300": (BIGRAMS, 300, 0, 1.0), "cap100": (BIGRAMS, 100, 0, 1.0), "unigrams": (UNIGRAMS, 300, 0, 1.0),
            "spread10": (BIGRAMS, 300, 10, 0.5), "spread5": (BIGRAMS, 300, 5, 0.3), "spread20": (BIGRAMS, 300, 20, 1.0)}


def main(names):
    df = read_source("../shared/data/article-bias-prediction").sample(frac=1, random_state=0).reset_index(drop=True)
    texts = np.array([training_text(t, b) for t, b in zip(df["title"], df["text"])], dtype=object)
    y, g = df["source_label"].to_numpy(), df["outlet"].to_numpy()
    folds = list(GroupKFold(5).split(texts, y, groups=g))
    for name in names:
        vec_kw, cap, min_outlets, max_share = VARIANTS[name]
        t, f1s = time.time(), []
        for tr, te in folds:
            train = df.iloc[tr].groupby("outlet", group_keys=False).head(cap)
            test = df.iloc[te].groupby("outlet", group_keys=False).head(100)
            vec = TfidfVectorizer(**vec_kw)
            x = vec.fit_transform(texts[train.index])
            keep = np.arange(x.shape[1])
            if min_outlets:
                codes, _ = pd.factorize(g[train.index])
                ind = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))))
                docs = (ind @ (x > 0).astype(np.float32)).toarray()  # outlets x terms: documents using it
                keep = np.flatnonzero(((docs > 0).sum(0) >= min_outlets) & (docs.max(0) / docs.sum(0) <= max_share))
            lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x[:, keep], y[train.index])
            pred = lr.predict(vec.transform(texts[test.index])[:, keep])
            f1s.append(f1_score(y[test.index], pred, labels=LABELS, average="macro"))
        print(f"{name:9} features {len(keep):7d}  macro-F1 by fold {np.round(f1s, 3)}  mean {np.mean(f1s):.3f}  "
              f"({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(VARIANTS))
