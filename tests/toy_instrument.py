"""A toy measure, for the registry test: one module, one registration. Each article's share of
characters that are "e", read by a reader that serves the instrument protocol."""

import numpy as np

from biasamp.instruments.registry import Measure, register_measure


class EReader:
    labels = [0.0, 1.0]  # not "e", "e"

    def probabilities(self, texts: list[str], batch_size: int) -> np.ndarray:
        share = np.array([t.lower().count("e") / len(t) if t else 0.0 for t in texts])
        return np.column_stack([1 - share, share])


def share_of_e(reader, texts: list[str], batch_size: int) -> np.ndarray:
    return reader.probabilities(texts, batch_size) @ np.asarray(reader.labels)


TOY = register_measure(
    Measure(
        "toy_e",
        "share of e (toy)",
        lambda scoring, model: EReader(),
        share_of_e,
        settings=lambda scoring: {"kind": "toy"},
    )
)
