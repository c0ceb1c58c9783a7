"""A toy mix, for the registry test: one class and one registered function. G_g trains on the half
of D_{g-1} the classifier reads as most right-leaning (it reads the scores)."""

from typing import Literal

import numpy as np

from biasamp.config import Mix
from biasamp.stages.mix import _tagged, register_mix


class MostRightMix(Mix):
    kind: Literal["toy_most_right"] = "toy_most_right"
    keep: float = 0.5
    reads_scores = True


@register_mix("toy_most_right")
def most_right(mix, real, synthetic, rng, scores):
    latest = synthetic[-1].merge(scores[["article_id", "p_right"]], on="article_id")
    return _tagged(latest.nlargest(int(np.ceil(mix.keep * len(latest))), "p_right"))
