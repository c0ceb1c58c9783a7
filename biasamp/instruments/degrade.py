"""Changes to an article that carry no leaning: what a collapsing model does to text.

DEGRADATIONS (name -> function of the body's words and a seeded rng) are the invariance check's
(biasamp.instruments.invariance); `profile` and `degrade_to_profile` give the study's degradation
null: the real article cut and looped to the length and repetition a generated one has.
A leaf beside biasamp.text: words in, words out, nothing of a model.
"""

from __future__ import annotations

import string
from typing import Callable

import numpy as np

from biasamp.text import REPEAT_NGRAM, sentences

Degradation = Callable[[list[str], np.random.Generator], list[str]]
SHUFFLED = 300  # words shuffled: the first 300 (shuffling a whole long article reads like a bag of words anyway)


def _first_words(n: int) -> Degradation:
    return lambda words, rng: words[:n]


def _looped_first_sentence(words: list[str], rng) -> list[str]:
    first = sentences(" ".join(words))[:1] or [""]
    return (first[0].split() or words[:20]) * 8


def _shuffled(words: list[str], rng) -> list[str]:
    head = list(words[:SHUFFLED])
    rng.shuffle(head)
    return head


def _blocks_with_phrase(words: list[str], rng) -> list[str]:
    """32-word blocks, each followed by one phrase of the article (3 words) said 3 times, as looping
    bylines and names are."""
    start = int(rng.integers(0, max(len(words) - 3, 1)))
    phrase = words[start : start + 3]
    out = []
    for i in range(0, len(words), 32):
        out += words[i : i + 32] + phrase * 3
    return out


def _gibberish(words: list[str], rng) -> list[str]:
    """A third of the words replaced by strings of random letters of the same length."""
    letters = np.array(list(string.ascii_lowercase))
    return ["".join(rng.choice(letters, max(len(w), 2))) if rng.random() < 1 / 3 else w for w in words]


DEGRADATIONS: dict[str, Degradation] = {
    "first 100 words": _first_words(100),
    "first 50 words": _first_words(50),
    "first sentence x8": _looped_first_sentence,
    "words shuffled": _shuffled,
    "32-word blocks + phrase x3": _blocks_with_phrase,
    "a third gibberish": _gibberish,
}


def degrade(body: str, name: str, seed: int) -> str:
    return " ".join(DEGRADATIONS[name](body.split(), np.random.default_rng(seed)))


# --- the degradation null: a real article made as short and as repetitive as a generated one ----


def profile(body: str) -> tuple[int, float]:
    """(words, repeated fraction): the share of the text's word 4-grams that are repeats of one
    seen before in it (0 for text that never repeats itself, near 1 for a loop)."""
    words = body.split()
    grams = [tuple(words[i : i + REPEAT_NGRAM]) for i in range(len(words) - REPEAT_NGRAM + 1)]
    return len(words), (1.0 - len(set(grams)) / len(grams)) if grams else 0.0


def degrade_to_profile(body: str, n_words: int, repeated: float) -> str:
    """The real body cut to the unique words the profile leaves, then looped to its length: as short
    and as repetitive as the generated text, with nothing of its own added."""
    words = body.split()
    if not words or n_words <= 0:
        return ""
    unique = words[: max(1, round(n_words * (1.0 - repeated)))]
    return " ".join((unique * (n_words // len(unique) + 1))[:n_words])
