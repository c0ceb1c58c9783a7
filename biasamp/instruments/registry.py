"""What an instrument is, and the measures the scoring stage reads from the registry.

An instrument is a model that reads text: it serves `Reader` (what each output column means, and
probabilities per text). The leaning classifier is the one instrument every study has: its three
probabilities, their degradation null and prevalence are the product, and the summaries and report
are built around them. Everything else a study measures per article is a `Measure`, one module and
one `register_measure` call (biasamp.instruments.quality registers the quality index `tqi`). From
what a measure declares, and from nothing else:

- `scores` gets its column; the summaries `{column}_mean` (95% CI) and `{column}_rho_{left,center,
  right}`, its Spearman association with each leaning probability inside a generation;
- each generation's W&B row carries those, `biasamp analyze` contrasts and trends `{column}_mean`,
  the run's closing lines print it, and the report draws it (its own panel, the association, the
  arm contrast);
- the scoring settings every scores file records include `settings(scoring)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from biasamp import tables
from biasamp.files import sha256


class Reader(Protocol):
    labels: list  # per output column: what it means (a leaning label, a quality level, ...)

    def probabilities(self, texts: list[str], batch_size: int) -> np.ndarray:
        """(len(texts), len(labels)), rows summing to 1."""


@dataclass(frozen=True)
class Measure:
    column: str  # the scores column; the summaries' {column}_mean and {column}_rho_*
    title: str  # what the report and the closing lines call it
    load: Callable  # (scoring: ScoringConfig, study_model: ModelConfig) -> a Reader
    measure: Callable  # (reader, generated texts, batch_size) -> one float per text
    settings: Callable = lambda scoring: {}  # (scoring) -> what decides its values, recorded in scores files
    key: str | None = None  # its entry in the recorded settings (default: the column)


MEASURES: dict[str, Measure] = {}


def register_measure(measure: Measure) -> Measure:
    MEASURES[measure.column] = measure
    if measure.column not in tables.MEASURES:
        tables.MEASURES.append(measure.column)
    return measure


def instrument_settings(c, offline_file) -> dict:
    """What decides an instrument's outputs: a hub one's name and input length, an offline file's hash."""
    if c.kind != "offline":
        return {"kind": c.kind, "name": c.name, "max_tokens": c.max_tokens}
    path = offline_file(c.name)
    return {"kind": c.kind, "name": c.name, "sha256": sha256(path)[:16] if path.is_file() else "missing"}
