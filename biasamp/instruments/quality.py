"""The offline text-quality proxy: levels 0 (noise), 1 (word salad), 2 (mild gibberish), 3 (clean)
per sentence, as the gibberish detector the paper used labels them. It is a proxy, not that model.

Features per sentence: character mix, out-of-vocabulary rate, mean unigram and bigram log-probability
under a word LM counted on held-out news, length, repetition inside the sentence and of earlier
sentences of the same article (so degenerate loops score low even when each copy reads well).
A multinomial logistic regression maps them to level probabilities; it is fitted on controlled
corruptions of real sentences (`biasamp quality train`), and `biasamp quality eval` reports how well
it separates adjacent levels on sentences from other articles (AUC per pair).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from biasamp.artifacts import write_npz
from biasamp.corpus import read_source
from biasamp.instruments.registry import Measure, instrument_settings, register_measure
from biasamp.text import sentences

PROXY = Path(__file__).parents[1] / "data" / "quality_proxy.npz"
LEVELS = [0, 1, 2, 3]
VOCAB_SIZE = 20_000
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
FEATURES = [
    "log_chars",
    "frac_letters",
    "frac_spaces",
    "frac_digits",
    "frac_other",
    "log_words",
    "oov",
    "unigram_lp",
    "bigram_lp",
    "bigram_min",
    "bigram_seen",
    "self_repeat",
    "prior_repeat",
    "mean_word_len",
]


def proxy_file(name: str) -> Path:
    """The proxy file a config's `name` means: 'bundled' is the shipped one."""
    return PROXY if name == "bundled" else Path(name)


def words(s: str) -> list[str]:
    return _WORD.findall(s.lower())


def trigrams(ws: list[str]) -> list[tuple]:
    return list(zip(ws, ws[1:], ws[2:]))


class QualityProxy:
    labels = LEVELS

    def __init__(
        self,
        vocab: list[str],
        counts: np.ndarray,
        bigram_keys: np.ndarray,
        bigram_counts: np.ndarray,
        mu=None,
        sigma=None,
        coef=None,
        intercept=None,
    ):
        self.vocab, self.counts = list(vocab), np.asarray(counts, np.float64)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.bigram_keys, self.bigram_counts = np.asarray(bigram_keys, np.int64), np.asarray(bigram_counts, np.float64)
        self.total = self.counts.sum()
        self.mu, self.sigma, self.coef, self.intercept = mu, sigma, coef, intercept

    @classmethod
    def count(cls, texts: list[str]) -> "QualityProxy":
        """Unigram counts of the VOCAB_SIZE most frequent words and bigram counts among them (seen 3 times or more)."""
        from collections import Counter

        uni = Counter()
        docs = [words(t) for t in texts]
        for ws in docs:
            uni.update(ws)
        vocab = [w for w, _ in uni.most_common(VOCAB_SIZE)]
        index = {w: i for i, w in enumerate(vocab)}
        keys = []
        for ws in docs:
            ids = np.array([index.get(w, -1) for w in ws], np.int64)
            ok = (ids[:-1] >= 0) & (ids[1:] >= 0)
            keys.append(ids[:-1][ok] * VOCAB_SIZE + ids[1:][ok])
        k, c = np.unique(np.concatenate(keys), return_counts=True)
        return cls(vocab, np.array([uni[w] for w in vocab]), k[c >= 3], c[c >= 3])

    def features(self, sents: list[str], owner: list[int] | None = None) -> np.ndarray:
        owner = owner if owner is not None else list(range(len(sents)))
        out = np.zeros((len(sents), len(FEATURES)))
        seen: set = set()
        current = None
        v = len(self.vocab)
        for r, (s, o) in enumerate(zip(sents, owner)):
            if o != current:
                seen, current = set(), o
            n = max(len(s), 1)
            letters = sum(ch.isalpha() for ch in s)
            spaces = s.count(" ")
            digits = sum(ch.isdigit() for ch in s)
            ws = words(s)
            ids = np.array([self.index.get(w, -1) for w in ws], np.int64)
            known = ids >= 0
            uni = np.where(
                known, np.log((self.counts[np.maximum(ids, 0)] + 1) / (self.total + v)), np.log(1 / (self.total + v))
            )
            if len(ws) >= 2:
                pair = known[:-1] & known[1:]
                keys = ids[:-1] * VOCAB_SIZE + ids[1:]
                pos = np.clip(np.searchsorted(self.bigram_keys, keys), 0, max(len(self.bigram_keys) - 1, 0))
                hit = pair & (self.bigram_keys[pos] == keys) if len(self.bigram_keys) else np.zeros(len(keys), bool)
                cb = np.where(hit, self.bigram_counts[pos], 0.0)
                c1 = np.where(known[:-1], self.counts[np.maximum(ids[:-1], 0)], 0.0)
                # stupid backoff: seen bigrams by their conditional frequency, the rest 0.4 x unigram
                bigram = np.where(hit, np.log(np.maximum(cb, 1) / np.maximum(c1, 1)), np.log(0.4) + uni[1:])
                bigram_lp, bigram_min, bigram_seen = bigram.mean(), bigram.min(), hit.mean()
            else:
                bigram_lp = bigram_min = uni.mean() if len(ws) else uni_floor(self)
                bigram_seen = 0.0
            tri = trigrams(ws)
            self_repeat = 1 - len(set(tri)) / len(tri) if tri else 0.0
            prior_repeat = float(np.mean([t in seen for t in tri])) if tri else float(s.strip() in seen)
            seen.update(tri)
            seen.add(s.strip())
            out[r] = [
                np.log1p(len(s)),
                letters / n,
                spaces / n,
                digits / n,
                (n - letters - spaces - digits) / n,
                np.log1p(len(ws)),
                1 - known.mean() if len(ws) else 1.0,
                uni.mean() if len(ws) else uni_floor(self),
                bigram_lp,
                bigram_min,
                bigram_seen,
                self_repeat,
                prior_repeat,
                np.mean([len(w) for w in ws]) if ws else 0.0,
            ]
        return out

    def fit(self, x: np.ndarray, y: np.ndarray) -> "QualityProxy":
        from sklearn.linear_model import LogisticRegression

        self.mu, self.sigma = x.mean(0), x.std(0) + 1e-9
        lr = LogisticRegression(C=1.0, max_iter=5000).fit((x - self.mu) / self.sigma, y)
        assert list(lr.classes_) == LEVELS
        self.coef, self.intercept = lr.coef_, lr.intercept_
        return self

    def level_probabilities(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mu) / self.sigma) @ self.coef.T + self.intercept
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def probabilities(self, sents: list[str], batch_size: int = 0, owner: list[int] | None = None) -> np.ndarray:
        return self.level_probabilities(self.features(sents, owner))

    def save(self, path: Path) -> None:
        write_npz(
            path,
            vocab=np.array(self.vocab),
            counts=self.counts.astype(np.int64),
            bigram_keys=self.bigram_keys.astype(np.uint32),
            bigram_counts=self.bigram_counts.astype(np.uint32),
            mu=self.mu,
            sigma=self.sigma,
            coef=self.coef,
            intercept=self.intercept,
            features=np.array(FEATURES),
        )

    @classmethod
    def load(cls, path: str) -> "QualityProxy":
        p = proxy_file(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"scoring.quality.name: no quality proxy file at {p} (biasamp quality train writes "
                f"one; for a Hugging Face model folder use kind: hf)"
            )
        try:
            z = np.load(p)
            features = list(z["features"])
        except (ValueError, OSError, KeyError) as e:
            raise ValueError(f"{p}: not a quality proxy file ({str(e).splitlines()[0][:100]})") from None
        if features != FEATURES:
            raise ValueError(f"{p}: fitted with other features ({list(z['features'])}); rerun biasamp quality train")
        return cls(
            z["vocab"],
            z["counts"],
            z["bigram_keys"],
            z["bigram_counts"],
            z["mu"],
            z["sigma"],
            z["coef"],
            z["intercept"],
        )


def uni_floor(proxy: QualityProxy) -> float:
    return float(np.log(1 / (proxy.total + len(proxy.vocab))))


# ---- controlled corruptions -------------------------------------------------------------------

_NOISE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789  .,;:!?-_/#@&*()[]'\""


def corrupt(
    sentence: str, level: int, rng: np.random.Generator, vocab: list[str], weights: np.ndarray, earlier: list[str]
) -> str:
    """A version of a real sentence at the given level (3 = as it is)."""
    toks = sentence.split()
    if level == 3 or not toks:
        return sentence
    if level == 2:  # mild: a few word-level slips in an otherwise fluent sentence
        toks = list(toks)
        for _ in range(max(1, round(0.15 * len(toks)))):
            i = int(rng.integers(len(toks)))
            op = rng.integers(4)
            if op == 0:
                toks[i] = vocab[rng.choice(len(vocab), p=weights)]
            elif op == 1 and i + 1 < len(toks):
                toks[i], toks[i + 1] = toks[i + 1], toks[i]
            elif op == 2 and len(toks) > 3:
                del toks[i]
            else:
                toks.insert(i, toks[i])
        return " ".join(toks)
    if level == 1:  # word salad: real words without sense, or a degenerate loop
        kind = rng.integers(4)
        if kind == 0:
            return " ".join(rng.permutation(toks))
        if kind == 1:
            return " ".join(vocab[j] for j in rng.choice(len(vocab), size=len(toks), p=weights))
        if kind == 2:
            k = int(rng.integers(2, 6))
            start = int(rng.integers(max(1, len(toks) - k + 1)))
            phrase = toks[start : start + k]
            return " ".join((phrase * (len(toks) // max(len(phrase), 1) + 2))[: max(len(toks), 2 * len(phrase))])
        return earlier[int(rng.integers(len(earlier)))] if earlier else " ".join(rng.permutation(toks))
    # noise: characters without words
    n = max(len(sentence), 5)
    if rng.integers(2) == 0:
        return "".join(rng.choice(list(_NOISE_CHARS), size=n))
    return " ".join(
        "".join(rng.choice(list(_NOISE_CHARS[:62]), size=int(rng.integers(1, 9)))) for _ in range(max(1, n // 6))
    )


def corrupted_sentences(articles: list[str], proxy: QualityProxy, seed: int, per_article: int = 8):
    """(sentences, owner, level): each article's sentences in order, each replaced by a corruption at
    a random level; 'earlier' repeats copy a previous sentence of the same article."""
    rng = np.random.default_rng(seed)
    top = proxy.vocab[:5000]
    weights = proxy.counts[:5000] / proxy.counts[:5000].sum()
    sents, owner, levels = [], [], []
    for a, text in enumerate(articles):
        ss = [s for s in sentences(text) if len(s.split()) >= 4][:per_article]
        earlier = []
        for s in ss:
            lev = int(rng.integers(4))
            sents.append(corrupt(s, lev, rng, top, weights, earlier))
            owner.append(a)
            levels.append(lev)
            earlier.append(s)
    return sents, owner, np.array(levels)


def split_articles(data: Path, exclude: set[str], seed: int) -> dict[str, list[str]]:
    """Three disjoint sets of ABP article bodies (study-corpus articles excluded): word counts,
    fitting, evaluation."""
    df = read_source(str(data))
    df = df[~df["article_id"].isin(exclude) & (df["text"].str.len() > 200)]
    order = np.random.default_rng(seed).permutation(len(df))
    texts = df["text"].to_numpy()[order]
    a, b = min(4000, len(texts) // 2), min(1500, len(texts) // 4)  # smaller corpora: halves and quarters
    return {"lm": list(texts[:a]), "fit": list(texts[a : a + b]), "eval": list(texts[a + b : a + 2 * b])}


def train(data: Path, exclude: set[str], seed: int, log=print) -> QualityProxy:
    parts = split_articles(data, exclude, seed)
    proxy = QualityProxy.count(parts["lm"])
    log(f"word LM: {len(proxy.vocab)} words, {len(proxy.bigram_keys)} bigrams from {len(parts['lm'])} articles")
    sents, owner, y = corrupted_sentences(parts["fit"], proxy, seed)
    log(f"fit: {len(sents)} sentences from {len(parts['fit'])} articles, levels {np.bincount(y).tolist()}")
    return proxy.fit(proxy.features(sents, owner), y)


def evaluate(proxy: QualityProxy, data: Path, exclude: set[str], seed: int) -> dict:
    """AUC of the expected level for each adjacent pair of levels, on corruptions of sentences from
    articles used neither for the word counts nor for the fit; and article-level checks: clean
    articles vs the same articles turned into repetition loops."""
    from sklearn.metrics import roc_auc_score

    parts = split_articles(data, exclude, seed)
    sents, owner, y = corrupted_sentences(parts["eval"], proxy, seed + 1)
    expected = proxy.probabilities(sents, 0, owner) @ np.array(LEVELS, float)
    aucs = {
        f"{k}-{k + 1}": float(roc_auc_score(y[np.isin(y, [k, k + 1])] == k + 1, expected[np.isin(y, [k, k + 1])]))
        for k in LEVELS[:-1]
    }
    means = {str(k): float(expected[y == k].mean()) for k in LEVELS}
    clean = parts["eval"][:200]
    first = [(sentences(t) or [t])[0] for t in clean]
    sentence_loop = [" ".join([f] * 10) for f in first]  # one sentence over and over
    phrase_loop = [" ".join(((f.split()[:4] or ["the"]) * 40)) + "." for f in first]  # a phrase without end
    tqi = {
        name: float(quality_index(proxy, texts, 0).mean())
        for name, texts in [("clean", clean), ("sentence_loop", sentence_loop), ("phrase_loop", phrase_loop)]
    }
    return {"sentences": len(sents), "auc_adjacent": aucs, "mean_expected_level": means, "article_tqi": tqi}


def quality_index(clf, texts: list[str], batch_size: int) -> np.ndarray:
    """Per article: the mean over its sentences of the expected level sum_k k * p_k (0 = noise ..
    3 = clean); 0 for an article with no sentence, as the authors do."""
    owner, sents = [], []
    for k, t in enumerate(texts):
        for s in sentences(t):
            owner.append(k)
            sents.append(s)
    levels = np.zeros(len(texts))
    if sents:
        # the offline proxy also reads which article each sentence belongs to (repetition of earlier sentences)
        probs = (
            clf.probabilities(sents, batch_size, owner)
            if isinstance(clf, QualityProxy)
            else clf.probabilities(sents, batch_size)
        )
        expected = probs @ np.asarray(clf.labels, dtype=float)
        sums = np.bincount(owner, weights=expected, minlength=len(texts))
        counts = np.bincount(owner, minlength=len(texts))
        np.divide(sums, counts, out=levels, where=counts > 0)
    return levels


def _load(scoring, study_model):
    q = scoring.quality
    if q.kind == "offline":
        return QualityProxy.load(q.name)
    from biasamp.instruments.hf import load_hub  # torch and transformers: only for hub instruments

    return load_hub(q.kind, q.name, q.labels, q.max_tokens, study_model, "quality")


register_measure(
    Measure(
        "tqi",
        "text-quality index (0 noise .. 3 clean)",
        _load,
        quality_index,
        lambda scoring: instrument_settings(scoring.quality, proxy_file),
        key="quality",
    )
)
