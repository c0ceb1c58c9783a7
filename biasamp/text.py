"""Text helpers every stage shares: the authors' article format, sentences, length-sorted batches.
A leaf: it imports nothing of biasamp."""

from __future__ import annotations

import re
from typing import Iterator, Sequence


def training_text(title: str, body: str) -> str:
    return f"title: {title}\nbody: {body}"  # the authors' article format


def classifier_text(title: str, body: str, read: str) -> str:
    """What the leaning classifier reads of an article: its body ("body"), or title and body in the
    authors' format ("title_body"). A generated article's title is its prompt, the same at every
    generation: read with the body it dilutes every change (python bench/leaning_calibration.py)."""
    return body if read == "body" else training_text(title, body)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def by_length(items: Sequence, batch_size: int) -> Iterator[list[int]]:
    """Indices of `items` in batches of similar length (sorted by len: little padding). Callers
    write each result back at its index, so outputs keep the input order."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


REPEAT_NGRAM = 4  # repetition is word 4-grams: what the classifier reads once and the degradation null measures


def without_repeats(text: str, n: int = REPEAT_NGRAM) -> str:
    """The words of `text` less each word that starts a word n-gram already seen in it: a loop reads
    once, a repeated phrase once more than it is new."""
    words, seen, kept = text.split(), set(), []
    for i, word in enumerate(words):
        gram = tuple(words[i : i + n])
        if len(gram) == n and gram in seen:
            continue
        seen.add(gram)
        kept.append(word)
    return " ".join(kept)


def windows(text: str, size: int) -> list[str]:
    """`text` in windows of `size` words (a tail under half a window joins the last); 0: whole."""
    words = text.split()
    if size <= 0 or len(words) <= size:
        return [" ".join(words)]
    chunks = [words[i : i + size] for i in range(0, len(words), size)]
    if len(chunks[-1]) < size // 2:
        tail = chunks.pop()
        chunks[-1] = chunks[-1] + tail
    return [" ".join(c) for c in chunks]
