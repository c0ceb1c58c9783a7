"""Study corpora (AllSides-labelled articles) and each arm's training mix.

Canonical article columns: article_id, title, text, source_label (left|center|right),
plus outlet and date where the source has them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd

from biasamp.config import LABELS, ArmConfig, CorpusConfig

BUNDLED = Path(__file__).parent / "data" / "abp_slice.jsonl.gz"

# Column names seen in the supported layouts, first match wins.
_ALIASES = {
    "article_id": ["article_id", "ID", "id"],
    "title": ["title", "headline"],
    "text": ["text", "content_original", "content", "body"],
    "source_label": ["source_label", "bias_text", "label", "bias"],
    "outlet": ["outlet", "source"],
    "date": ["date"],
}
_NUMERIC_LABELS = {0: "left", 1: "center", 2: "right"}  # Article-Bias-Prediction's coding


def read_source(source: str) -> pd.DataFrame:
    """Read articles from a file, folder or `datasets` dataset into the canonical columns."""
    if source == "bundled":
        path = BUNDLED
    elif source.startswith("hf:"):
        import datasets

        name = source[3:]
        ds = datasets.load_dataset(name, split="train") if not Path(name).is_dir() else datasets.load_from_disk(name)
        return _canonical(ds.to_pandas(), source)
    else:
        path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"corpus source {path}: no such file or folder")
    if path.is_dir():
        inner = path / "articles.jsonl.gz"
        if inner.exists():  # the layout of ../shared/data/article-bias-prediction
            path = inner
        else:  # the original repository's jsons/ folder: one JSON object per file
            files = sorted(path.glob("*.json"))
            if not files:
                raise FileNotFoundError(f"corpus source {path}: no articles.jsonl.gz or *.json files")
            return _canonical(pd.DataFrame([json.loads(f.read_text()) for f in files]), str(path))
    return _canonical(read_table(path), str(path))


def read_table(path: Path) -> pd.DataFrame:
    """A JSONL[.gz], JSON, CSV[.gz] or Parquet file as it is."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            return pd.DataFrame([json.loads(line) for line in fh if line.strip()])
    if name.endswith(".json"):
        return pd.DataFrame(json.loads(path.read_text()))
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path)
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unknown format (jsonl[.gz], json, csv, parquet; for corpora also a folder or hf:NAME)")


def _canonical(df: pd.DataFrame, where: str) -> pd.DataFrame:
    out = {}
    for col, names in _ALIASES.items():
        found = next((n for n in names if n in df.columns), None)
        if found is not None:
            out[col] = df[found]
    for col in ("text", "source_label"):
        if col not in out:
            raise ValueError(f"{where}: no {col} column (looked for {', '.join(_ALIASES[col])})")
    out = pd.DataFrame(out)
    if "article_id" not in out:
        out["article_id"] = np.arange(len(out))
    out["article_id"] = out["article_id"].astype(str)
    out["title"] = out.get("title", pd.Series("", index=out.index)).fillna("").astype(str)
    out["text"] = out["text"].fillna("").astype(str)
    out["source_label"] = out["source_label"].map(lambda v: _label(v, where))
    for col in ("outlet", "date"):
        out[col] = out.get(col, pd.Series("", index=out.index)).fillna("").astype(str)
    return out[["article_id", "title", "text", "source_label", "outlet", "date"]]


def _label(value, where: str) -> str:
    if isinstance(value, (int, np.integer)) and int(value) in _NUMERIC_LABELS:
        return _NUMERIC_LABELS[int(value)]
    v = str(value).strip().lower()
    if v in LABELS:
        return v
    if v.isdigit() and int(v) in _NUMERIC_LABELS:
        return _NUMERIC_LABELS[int(v)]
    raise ValueError(f"{where}: label {value!r} is not left/center/right or 0/1/2")


def sample_corpus(articles: pd.DataFrame, cfg: CorpusConfig, name: str = "corpus") -> pd.DataFrame:
    """Filter (years, length, non-empty) and draw cfg.per_label articles per label, seeded."""
    df = articles[articles["text"].str.strip() != ""]
    if cfg.years is not None:
        years = pd.to_datetime(df["date"], errors="coerce", format="mixed").dt.year
        df = df[years.between(*cfg.years)]
    if cfg.max_words is not None:
        df = df[df["text"].str.split().str.len() <= cfg.max_words]
    df = df.drop_duplicates("article_id")
    rng = np.random.default_rng(cfg.seed)
    parts = []
    for label, n in cfg.per_label.items():
        pool = df[df["source_label"] == label]
        if len(pool) < n:
            raise ValueError(
                f"corpora.{name}.per_label.{label}: asks {n} articles, only {len(pool)} remain after filters"
            )
        parts.append(pool.iloc[np.sort(rng.choice(len(pool), n, replace=False))])
    return pd.concat(parts, ignore_index=True)


# --- each arm's training mix: kind -> function (the kinds and their settings: biasamp.config) ----

MIXES = {}


def register_mix(kind: str):
    def add(fn):
        MIXES[kind] = fn
        return fn
    return add


def training_set(arm: ArmConfig, generation: int, real: pd.DataFrame, synthetic: list[pd.DataFrame], seed: int,
                 previous_scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """The articles G_generation is fine-tuned on: article_id, title, text, and `source`, "real" or
    the generation that wrote the article ("G0", "G1", ...).

    `synthetic` holds D_0 .. D_{generation-1}, oldest first, each with its `generation` column;
    `previous_scores` the scores of D_{generation-1} (mixes that read the classifier). G0 always trains
    on the real corpus. Random draws are seeded by (seed, generation), so a resumed run draws what a
    fresh one would.
    """
    if generation == 0:
        return _tagged(real, "real")
    rng = np.random.default_rng([seed, generation])
    return MIXES[arm.mix.kind](arm.mix, real, synthetic, rng, previous_scores).reset_index(drop=True)


def _tagged(df: pd.DataFrame, source: str | None = None) -> pd.DataFrame:
    """article_id, title, text, source; a synthetic table's source is the generation that wrote it."""
    out = df[["article_id", "title", "text"]].copy()
    out["source"] = source if source is not None else "G" + df["generation"].astype(str)
    return out


def _real_sample(real: pd.DataFrame, k: int, rng) -> pd.DataFrame:
    return _tagged(real.iloc[np.sort(rng.choice(len(real), k, replace=False))], "real")


@register_mix("replace")
def _replace(mix, real, synthetic, rng, scores):
    return _tagged(synthetic[-1])


@register_mix("preserve")
def _preserve(mix, real, synthetic, rng, scores):
    return pd.concat([_tagged(synthetic[-1]), _real_sample(real, round(mix.real_fraction * len(real)), rng)])


@register_mix("accumulate")
def _accumulate(mix, real, synthetic, rng, scores):
    return pd.concat([_tagged(real, "real"), *[_tagged(d) for d in synthetic]])


@register_mix("accumulate_subsample")
def _accumulate_subsample(mix, real, synthetic, rng, scores):
    pool = _accumulate(mix, real, synthetic, rng, scores).reset_index(drop=True)
    return pool.iloc[np.sort(rng.choice(len(pool), len(real), replace=False))]  # constant size N


def _apportion(weights: dict[str, float], n: int) -> dict[str, int]:
    """n split in proportion to `weights` (largest remainders), as whole numbers."""
    keys = list(weights)
    w = np.array([weights[k] for k in keys], dtype=float)
    raw = w / w.sum() * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return dict(zip(keys, counts.tolist()))


def _labels_of(latest: pd.DataFrame, scores: pd.DataFrame) -> np.ndarray:
    """The classifier's label of each article of D_{g-1}, in its row order."""
    return latest[["article_id"]].merge(scores[["article_id", "label"]], on="article_id", how="left")["label"].to_numpy()


@register_mix("curate")
def _curate(mix, real, synthetic, rng, scores):
    """D_{g-1} resampled to its own size with the real corpus's label shares (labels of D_{g-1} as the
    classifier gave them). A label short of articles is upsampled: all of them, then draws with
    replacement; a label the classifier never gave has its share spread over the others."""
    latest = synthetic[-1].reset_index(drop=True)
    labels = _labels_of(latest, scores)
    target = real["source_label"].value_counts(normalize=True)
    present = {lab: share for lab, share in target.items() if (labels == lab).any()}
    picks = []
    for lab, n in _apportion(present, len(latest)).items():
        pool = rng.permutation(np.flatnonzero(labels == lab))
        picks.append(pool[:n] if len(pool) >= n else np.concatenate([pool, rng.choice(pool, n - len(pool))]))
    return _tagged(latest.iloc[np.sort(np.concatenate(picks))])


@register_mix("preserve_balanced")
def _preserve_balanced(mix, real, synthetic, rng, scores):
    """D_{g-1} plus k = real_fraction*N real articles, k split over labels in proportion to how far
    each label of D_{g-1} (classifier labels) falls short of the real corpus's share of D_{g-1} + k."""
    latest = synthetic[-1]
    k = round(mix.real_fraction * len(real))
    have = pd.Series(_labels_of(latest, scores)).value_counts()
    target = real["source_label"].value_counts(normalize=True)
    deficit = {lab: max(0.0, share * (len(latest) + k) - have.get(lab, 0)) for lab, share in target.items()}
    chosen = []
    for lab, n in _apportion(deficit, k).items():
        pool = np.flatnonzero(real["source_label"].to_numpy() == lab)
        chosen.append(rng.choice(pool, min(n, len(pool)), replace=False))
    chosen = np.concatenate(chosen)
    if len(chosen) < k:  # a label ran out of real articles: the rest at random
        rest = np.setdiff1d(np.arange(len(real)), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, k - len(chosen), replace=False)])
    return pd.concat([_tagged(latest), _tagged(real.iloc[np.sort(chosen)], "real")])


def write_jsonl_gz(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for row in df.to_dict(orient="records"):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
