"""Text helpers every stage shares: the authors' article format, sentences, length-sorted batches.
A leaf: it imports nothing of biasamp."""

from __future__ import annotations

import re
from typing import Iterator, Sequence


def training_text(title: str, body: str) -> str:
    return f"title: {title}\nbody: {body}"  # the authors' article format


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def by_length(items: Sequence, batch_size: int) -> Iterator[list[int]]:
    """Indices of `items` in batches of similar length (sorted by len: little padding). Callers
    write each result back at its index, so outputs keep the input order."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
