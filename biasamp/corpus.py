"""Study corpora (AllSides-labelled articles): reading any supported source, drawing a study corpus.

Canonical article columns: article_id, title, text, source_label (left|center|right),
plus outlet and date where the source has them.
"""

from __future__ import annotations

import gzip
import json
import numbers
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd

from biasamp.config import LABELS, CorpusConfig
from biasamp.files import atomic, check_regular_file

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


def read_source(source: str, labelled: bool = True) -> pd.DataFrame:
    """Read articles from a file, folder or `datasets` dataset into the canonical columns (labelled:
    False, a file without labels reads with source_label empty)."""
    if source == "bundled":
        path = BUNDLED
    elif source.startswith("hf:"):
        import datasets

        name = source[3:]
        ds = datasets.load_dataset(name, split="train") if not Path(name).is_dir() else datasets.load_from_disk(name)
        return _canonical(ds.to_pandas(), source, labelled)
    else:
        path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"corpus source {path}: no such file or folder")
    check_regular_file(path)
    if path.is_dir():
        inner = path / "articles.jsonl.gz"
        if inner.exists():  # the layout of ../shared/data/article-bias-prediction
            path = inner
        else:  # the original repository's jsons/ folder: one JSON object per file
            files = sorted(path.glob("*.json"))
            if not files:
                raise FileNotFoundError(f"corpus source {path}: no articles.jsonl.gz or *.json files")
            return _canonical(pd.DataFrame([_one_json(f) for f in files]), str(path), labelled)
    return _canonical(read_table(path), str(path), labelled)


def _one_json(path: Path):
    try:
        check_regular_file(path)
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, EOFError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not a JSON file ({str(e).splitlines()[0][:120]})") from None


def read_table(path: Path) -> pd.DataFrame:
    """A JSONL[.gz], JSON, CSV[.gz] or Parquet file as it is. A file that is cut short, compressed
    otherwise than its name says, or not in its format is one error naming it."""
    path = Path(path)
    check_regular_file(path)
    try:
        return _read_table(path)
    except EOFError:  # gzip's stream ended early
        raise ValueError(f"{path}: cut short (the compressed stream ends early)") from None
    except gzip.BadGzipFile:
        raise ValueError(f"{path}: not gzip-compressed, though its name ends in .gz") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (compressed, though its name does not end in .gz?)") from None
    except ValueError as e:  # pandas' and pyarrow's parse errors, JSON errors: name the file once
        message = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _read_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if name.endswith(".gz") else open
        rows = []
        with opener(path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        raise ValueError(f"{path}: line {i} is not JSON") from None
                    if not isinstance(rows[-1], dict):  # one article per line: an object of its fields
                        raise ValueError(f"{path}: line {i} is {_json_kind(rows[-1])}, not an object of fields")
        return pd.DataFrame(rows)
    if name.endswith(".json"):
        rows = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(rows, list):  # a list of articles (else pandas reads an object of columns)
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: item {i} is {_json_kind(row)}, not an object of fields")
        elif not isinstance(rows, dict):
            raise ValueError(f"{path}: {_json_kind(rows)}, not a list of articles")
        return pd.DataFrame(rows)
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path)
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: unknown format (jsonl[.gz], json, csv, parquet; for corpora also a folder or hf:NAME)")


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, numbers.Number):
        return "a number"
    kinds = {list: "an array", np.ndarray: "an array", tuple: "an array", dict: "an object", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


def text_column(df: pd.DataFrame, col: str, where: str) -> pd.Series:
    """A column of text as strings, missing values as "": a number, array, object or boolean there is
    not an article's text, and one error names its row (str() would read [1, 2] as "[1, 2]")."""
    values = df[col]
    bad = values.map(lambda v: not (isinstance(v, str) or v is None or v is pd.NA or (isinstance(v, float) and v != v)))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.iloc[row]
        raise ValueError(f"{where}: row {row + 1}: {col} is {_json_kind(value)} ({str(value)[:40]!r}), not text")
    return values.fillna("").astype(str)


def visible(text: str) -> bool:
    """Whether a text has a letter, digit, mark of punctuation or symbol (only spaces and zero-width
    characters such as U+200B are no article)."""
    return any(unicodedata.category(c)[0] in "LNPS" for c in text)


def _canonical(df: pd.DataFrame, where: str, labelled: bool = True) -> pd.DataFrame:
    out = {}
    for col, names in _ALIASES.items():
        found = next((n for n in names if n in df.columns), None)
        if found is not None:
            out[col] = df[found]
    if not labelled and "source_label" not in out:
        out["source_label"] = pd.Series("", index=df.index)
    for col in ("text", "source_label"):
        if col not in out:
            raise ValueError(f"{where}: no {col} column (looked for {', '.join(_ALIASES[col])})")
    out = pd.DataFrame(out)
    if "article_id" not in out:
        out["article_id"] = np.arange(len(out))
    out["article_id"] = out["article_id"].astype(str)
    repeated = out["article_id"][out["article_id"].duplicated()]
    if len(repeated):  # a draw would keep one row of each and lose the rest without a word
        raise ValueError(
            f"{where}: article id {repeated.iloc[0]!r} is on more than one row "
            f"({repeated.nunique()} ids repeated, {out['article_id'].isin(repeated).sum()} rows); ids must be unique"
        )
    out["title"] = text_column(out, "title", where) if "title" in out else ""
    out["text"] = text_column(out, "text", where)
    out["source_label"] = out["source_label"].map(lambda v: "" if v == "" and not labelled else _label(v, where))
    for col in ("outlet", "date"):
        out[col] = out.get(col, pd.Series("", index=out.index)).fillna("").astype(str)
    return out[["article_id", "title", "text", "source_label", "outlet", "date"]]


def _label(value, where: str) -> str:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, int, np.integer)):
        raise ValueError(f"{where}: label {value!r} is a {type(value).__name__}; labels are left/center/right or 0/1/2")
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
    df = articles[articles["text"].map(visible)]
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


def write_jsonl_gz(df: pd.DataFrame, path: Path) -> None:
    with atomic(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for row in df.to_dict(orient="records"):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
