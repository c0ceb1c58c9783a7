"""The tables every stage reads and writes: the contract between stages, declared once.

Each table has a path under the study folder (per version: `{arm}__seed{seed}__gen{generation}`),
its columns with their types, and its key. `write` checks a frame against its declaration and
writes it atomically; `read` reads every file of a table at once. docs/loop.md's artifact list is
`listing()` (a test checks it is).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pandas.api import types

from biasamp.files import disk_full, is_disk_full

ADDRESS = "study:str arm:str seed:int generation:int"
ADDRESS_COLUMNS = [item.split(":")[0] for item in ADDRESS.split()]
_READINGS = ("share_left", "share_center", "share_right", "lean_index")


def _ci(*stats: str) -> str:
    return " ".join(f"{s}:float {s}_lo:float {s}_hi:float" for s in stats)


# The per-article measures (biasamp.instruments.registry.register_measure adds them; the package
# biasamp.instruments registers the built-in `tqi`). A table's spec names where their columns go:
# {measures} one float each; {measure_means} {m}_mean with CI; {measure_rhos} {m}_rho_* with CIs.
MEASURES: list[str] = []
_MEASURE_SPECS = {
    "measures": lambda m: f"{m}:float",
    "measure_means": lambda m: _ci(f"{m}_mean"),
    "measure_rhos": lambda m: _ci(*(f"{m}_rho_{lab}" for lab in ("left", "center", "right"))),
}
_STATS = (
    _ci(*_READINGS, "prev_left", "prev_center", "prev_right")
    + " {measure_means} "
    + _ci(*(f"null_{r}" for r in _READINGS))
    + " "
    + _ci(*(f"{r}_calibrated" for r in _READINGS))
    + " {measure_rhos}"
)
_CHECK = {
    "str": types.is_string_dtype,
    "int": types.is_integer_dtype,
    "bool": types.is_bool_dtype,
    "float": lambda s: types.is_float_dtype(s) or types.is_integer_dtype(s),
}


@dataclass(frozen=True)
class Table:
    name: str
    path: str  # under OUT; per-version tables: a folder of {arm}__seed{seed}__gen{generation}.parquet
    spec: str  # "column:type ..." (str, int, float, bool), in column order
    key: tuple[str, ...]
    doc: str

    @property
    def columns(self) -> dict[str, str]:
        spec = self.spec.format(**{k: " ".join(map(f, MEASURES)) for k, f in _MEASURE_SPECS.items()})
        return dict(item.split(":") for item in spec.split())

    def file(self, out: Path, **address) -> Path:
        return Path(out) / self.path.format(**address)

    def check(self, df: pd.DataFrame) -> pd.DataFrame:
        """The frame with the declared columns in declared order; a missing column or a wrong type
        is an error (a stage broke the contract)."""
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise ValueError(f"table {self.name}: missing column(s) {missing}")
        df = df[list(self.columns)].reset_index(drop=True)
        for col, kind in self.columns.items():
            if len(df) and not df[col].isna().all() and not _CHECK[kind](df[col]):
                raise ValueError(f"table {self.name}: column {col} is {df[col].dtype}, declared {kind}")
        return df

    def write(
        self, df: pd.DataFrame, out: Path, row_group_size: int | None = None, metadata: dict | None = None, **address
    ) -> Path:
        """Checked and written atomically; `metadata` (str -> str) goes into the Parquet footer."""
        path = self.file(out, **address)
        write_parquet(self.check(df), path, row_group_size=row_group_size, metadata=metadata)
        return path

    def where(self, out: Path) -> Path:
        """The table under OUT: its file, or for a per-version table the folder of its files."""
        return Path(out) / (self.path.split("/")[0] if "{" in self.path else self.path)

    def read(self, out: Path, **filters) -> pd.DataFrame:
        """Every file of the table (a per-version table's whole folder), optionally filtered."""
        return self.read_at(self.where(out), **filters)

    def read_one(self, out: Path, **address) -> pd.DataFrame:
        """One version's (or one corpus's) file of the table, checked as `read_at` does."""
        return self.read_at(self.file(out, **address))

    def read_at(self, path: Path, **filters) -> pd.DataFrame:
        """This table read from `path` (a file, or a folder of per-version files), each file first
        checked: readable, and holding the table's address columns (a file of another tool, or cut
        short, is one error naming it, not an all-null frame)."""
        path = Path(path)
        files = sorted(f for f in path.glob("*.parquet") if f.name[0] not in "._") if path.is_dir() else [path]
        needed = [c for c in self.columns if c in self.key or c in ADDRESS_COLUMNS]
        for f in files:
            if (damage := parquet_damage(f)) is not None:
                raise ValueError(f"{f}: {damage}: not a readable {self.name} table (restore it, or set it aside)")
            if missing := [c for c in needed if c not in pq.read_schema(f).names]:
                raise ValueError(f"{f}: not a biasamp {self.name} table (no column {', '.join(missing)})")
        flt = [(k, "==", v) for k, v in filters.items()] or None
        return pd.read_parquet(path, filters=flt)


def write_parquet(df: pd.DataFrame, path: Path, metadata: dict | None = None, **to_parquet) -> None:
    """Write to a temp name beside `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: the team on shared storage reads what the umask allows
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)  # what DataFrame.to_parquet does, plus metadata
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **(metadata or {})})
        pq.write_table(table, tmp, **to_parquet)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception) and is_disk_full(e, path.parent):
            raise disk_full(path, need=df.memory_usage(deep=True).sum()) from None
        raise


def file_metadata(path: Path, key: str) -> str | None:
    """One key of a Parquet file's footer metadata (None: not there)."""
    value = (pq.read_schema(path).metadata or {}).get(key.encode())
    return value.decode() if value is not None else None


def parquet_damage(path: Path) -> str | None:
    """What is wrong with a Parquet file (None: its footer and schema read)."""
    if not Path(path).is_file():
        return "missing"
    try:
        pq.ParquetFile(path).metadata
    except Exception as e:  # pyarrow raises several kinds for a truncated or foreign file
        return f"unreadable ({str(e).splitlines()[0][:80]})"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_VERSION = "{arm}__seed{seed}__gen{generation}.parquet"
TABLES = {
    t.name: t
    for t in [
        Table(
            "corpus",
            "corpus/{corpus}.parquet",
            "article_id:str title:str text:str source_label:str outlet:str date:str",
            ("article_id",),
            "the real articles each corpus drew (file named by corpus)",
        ),
        Table(
            "training",
            "training/" + _VERSION,
            f"{ADDRESS} article_id:str source:str",
            (),
            "one row per training example of G_g: source is real or the generation that wrote it (G0, G1, ...)",
        ),
        Table(
            "train_metrics",
            "train_metrics/" + _VERSION,
            f"{ADDRESS} step:int loss:float train_loss:float train_articles:int train_tokens:float train_seconds:float "
            "capture_seconds:float generate_seconds:float score_seconds:float epochs:float batch_size:int lr:float "
            "weight_decay:float max_length:int init:str backend:str",
            ("study", "arm", "seed", "generation", "step"),
            "G_g's fine-tuning: loss per optimizer step, then per generation: mean loss, articles, tokens, "
            "wall seconds of each stage (train, capture, generate, score), the resolved hyper-parameters",
        ),
        Table(
            "articles",
            "articles/" + _VERSION,
            f"{ADDRESS} article_id:str title:str text:str source_label:str n_tokens:int",
            ("study", "arm", "seed", "generation", "article_id"),
            "D_g, what G_g wrote; written last: marks G_g done",
        ),
        Table(
            "neurons",
            "neurons/" + _VERSION,
            f"{ADDRESS} layer:int neuron:int kind:str stat:str value:float",
            ("study", "arm", "seed", "generation", "layer", "neuron", "kind", "stat"),
            "G_g's neuron summaries, one row group per layer",
        ),
        Table(
            "scores",
            "scores/" + _VERSION,
            f"{ADDRESS} article_id:str p_left:float p_center:float p_right:float label:str {{measures}} ppl:float "
            "ppl_ref:float null_p_left:float null_p_center:float null_p_right:float",
            ("study", "arm", "seed", "generation", "article_id"),
            "per-article leaning, measures (tqi: quality), perplexity of D_g; null_p_*: the leaning of the same "
            "article's real text cut and looped to the length and repetition of what G_g wrote (the degradation null)",
        ),
        Table(
            "summary",
            "summary.parquet",
            f"{ADDRESS} n_articles:int {_STATS} ppl_mean:float ppl_ref_mean:float",
            ("study", "arm", "seed", "generation"),
            "per version: argmax label shares, lean index (mean p_right - p_left), prevalence (prev_*), each "
            "measure's mean (tqi_mean), the same readings under the degradation null (null_*), the readings in label "
            "units calibrated on those degraded real articles (*_calibrated), all with 95% "
            "bootstrap CIs; tqi_rho_*: each measure vs p_*",
        ),
        Table(
            "summary_arms",
            "summary_arms.parquet",
            f"study:str arm:str generation:int n_seeds:int n_articles:int {_STATS} ppl_mean:float ppl_ref_mean:float",
            ("study", "arm", "generation"),
            "the same across seeds (two-stage bootstrap)",
        ),
        Table(
            "neuron_tests",
            "neuron_tests.parquet",
            "target:str kind:str stat:str layer:int neuron:int beta:float se:float t:float p:float q:float r:float "
            "n_obs:int n_trajectories:int significant:bool",
            ("target", "kind", "stat", "layer", "neuron"),
            "`biasamp analyze`; `--mode paper` writes neuron_tests_paper.parquet",
        ),
        Table(
            "arm_contrasts",
            "arm_contrasts.parquet",
            "study:str arm:str baseline:str generation:int target:str estimate:float lo:float hi:float se:float "
            "p:float arm_value:float baseline_value:float n_seeds:int n_seeds_baseline:int seed_variation_in_ci:bool",
            ("study", "arm", "generation", "target"),
            "`biasamp analyze`: each arm minus the baseline arm",
        ),
        Table(
            "arm_trends",
            "arm_trends.parquet",
            "study:str arm:str target:str estimate:float lo:float hi:float se:float p:float change:float "
            "change_lo:float change_hi:float change_p:float first_generation:int last_generation:int "
            "n_generations:int n_seeds:int seed_variation_in_ci:bool",
            ("study", "arm", "target"),
            "`biasamp analyze`: each arm's slope per generation, and its change from the first generation to the last",
        ),
    ]
}


def listing() -> str:
    """docs/loop.md's artifact list, from the declarations."""
    lines = []
    for t in TABLES.values():
        lines.append(f"OUT/{t.path}")
        lines.append(f"    {t.doc}")
        lines.append(f"    {', '.join(t.columns)}")
    return "\n".join(lines)
