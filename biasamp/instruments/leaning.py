"""The offline leaning classifier, its calibration, and the evaluation that chose it.

Classifier: TF-IDF of the word 1-2 grams that at least MIN_OUTLETS training outlets use (outlet
names, bylines and house boilerplate drop out: what must generalise is leaning, not style), then a
multinomial logistic regression with every label weighing the same and each article weighing
(articles of its outlet)^-OUTLET_POWER. Trained on every Article-Bias-Prediction article except
those a study corpus may draw and those of the outlets held out for `biasamp classifier check`
(CHECK_SHARE of each label's articles), at most PER_OUTLET per outlet: a few big outlets' house
style should not stand for their label.

It reads an article in windows of WINDOW words, with repeats read once (biasamp.text), and reports
the mean of the windows' probabilities: a shorter article is a smaller sample of the same readings,
and a looping one is read as what it says once. Reading whole articles instead read shortened,
looped and shuffled text as right-leaning (up to +0.39 in the right share, bench/leaning_invariance.py):
texts with little evidence fell to the intercept, which favoured right.

Calibration (biasamp.instruments.prevalence): the same recipe cross-fitted over FOLDS
outlet-grouped folds, so that each article is scored by a model that never saw its outlet.

Both ship in biasamp/data (about 1 MB); `biasamp classifier train` rebuilds them and
`biasamp classifier eval` measures the recipe by leave-outlets-out cross-validation, beside a plain
TF-IDF baseline, as article-level macro-F1 and as the error of corpus-level shares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from biasamp.artifacts import write_npz
from biasamp.config import LABELS, load_config
from biasamp.corpus import read_source, sample_corpus
from biasamp.instruments import prevalence
from biasamp.text import training_text, windows, without_repeats

MODEL = Path(__file__).parents[1] / "data" / "leaning_tfidf.npz"
PER_OUTLET = 300  # training articles per outlet at most (13 outlets hold 88% of the corpus)
MIN_OUTLETS = 20  # a feature must be used by this many training outlets (a tenth of them, at least 2, on
#                   smaller corpora); on ABP it keeps ~40k of ~1M n-grams
OUTLET_POWER = 0.5  # an article weighs (articles of its outlet)^-0.5: big outlets count, but less than their size
#                    (vs 0, every article equal: +0.007 macro-F1, pacc r 0.40 -> 0.48; 1.0, every outlet equal:
#                    -0.04 macro-F1; python bench/leaning_variants.py)
C = 1.0  # inverse L2 strength of the logistic regression
WINDOW = 128  # words per window read (python bench/leaning_invariance.py: 128 / 256 / 512 and whole articles)
MAX_WINDOWS = 8  # training windows per article at most (each article weighs the same however long); they
#                  are of random lengths, WINDOW / SHORTEST to 5 WINDOW / 4, plus one shuffled: the regression
#                  sees short and bigram-poor text of every label alike, and has no intercept, so that text
#                  with little evidence favours no label (bench/leaning_invariance.py)
SHORTEST = 5
CHECK_SHARE = 0.15  # of each label's articles: their outlets are held out of training, for the check
FOLDS = 5  # outlet-grouped cross-fitting folds
# Known mixes (left, center, right) of the prevalence benchmark, from the issue that asked for it.
BENCH_MIXES = ((0.60, 0.20, 0.20), (0.20, 0.20, 0.60), (0.34, 0.33, 0.33), (0.15, 0.70, 0.15))
BENCH_SIZE = 300  # articles per benchmark corpus


def model_file(name: str | Path) -> Path:
    """The model file a config's `name` means: 'bundled' is the shipped one."""
    return MODEL if str(name) == "bundled" else Path(name)


def calibration_path(model: str | Path) -> Path:
    """Where a model file's calibration table lives: beside it."""
    p = model_file(model)
    return p.with_name(p.stem + ".calibration.parquet")


def power_path(model: str | Path) -> Path:
    """Where a model file's power record lives: beside it (bench/leaning_calibration.py --record)."""
    p = model_file(model)
    return p.with_name(p.stem + ".power.json")


def load_power(cfg) -> dict | None:
    """A ClassifierConfig's power record (the spread of a planted change's calibrated estimate per
    decay, at a number of articles), or None: a hub classifier, or an offline one never benchmarked."""
    path = power_path(cfg.name) if cfg.kind == "offline" else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def power_statement(cfg) -> str:
    """What change of right share a study (a StudyConfig) can see: from its classifier's power record
    and its articles per generation and seeds (`biasamp validate`, `biasamp run`, the report)."""
    c = cfg.scoring.classifier
    record = load_power(c)
    if record is None:
        return f"power: unknown, no power record for classifier {c.kind}:{c.name} (docs/measuring.md, 'Power')"
    per_gen = min(sum(cfg.corpora[arm.corpus].per_label.values()) for arm in cfg.arms.values())
    seeds = len(cfg.seeds)
    sds = [record["sd"][decay]["calibrated"] for decay in ("none", "collapse")]
    low, high = (prevalence.detectable_change(sd, record["articles"], per_gen, seeds) for sd in sds)
    need = [prevalence.articles_needed(sd, record["articles"], prevalence.PAPER_CHANGE, seeds) for sd in sds]
    seeds_note = f"{seeds} seeds (their run-to-run variation not counted)" if seeds > 1 else "1 seed"
    line = (
        f"power: with {per_gen} articles per generation and {seeds_note}, the smallest change of right share "
        f"from G0 seen at 80% power (alpha 0.05) is {low:.2f} on intact text, {high:.2f} under collapse-like "
        f"decay (calibrated reading)"
    )
    if high <= prevalence.PAPER_CHANGE:
        return line + f"; the paper's +{prevalence.PAPER_CHANGE} is within reach"
    return line + (
        f"; the paper's +{prevalence.PAPER_CHANGE} needs {need[0]:,}-{need[1]:,} articles per generation "
        "(corpora.*.per_label)"
    )


def load_calibration(cfg) -> pd.DataFrame | None:
    """A ClassifierConfig's calibration table: the configured one, the one beside an offline model,
    or none (a hub classifier without one)."""
    if cfg.calibration:
        return prevalence.read_calibration(cfg.calibration)
    if cfg.kind == "offline":
        return prevalence.read_calibration(calibration_path(cfg.name))
    return None


@dataclass
class LeaningModel:
    """Serves the instrument protocol (biasamp.instruments.hf): `labels`, `probabilities`."""

    vocabulary: np.ndarray  # n-grams, in feature order
    idf: np.ndarray
    weight: np.ndarray  # (3, n_features), rows in LABELS order
    bias: np.ndarray
    window: int = 0  # words per window; 0: the whole article at once (models from before windows)
    outlets: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))  # trained on; empty: unrecorded
    labels = list(LABELS)

    def features(self, texts: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(
            ngram_range=(1, 2),
            sublinear_tf=True,
            vocabulary=dict(zip(self.vocabulary, range(len(self.vocabulary)))),
            dtype=np.float32,
        )
        vec.idf_ = self.idf
        return vec.transform(texts)

    def probabilities(self, texts: list[str], batch_size: int = 0) -> np.ndarray:
        """Per text: the mean of its windows' probabilities (repeats read once)."""
        pieces, of = [], []
        for i, text in enumerate(texts):
            parts = windows(without_repeats(text), self.window) if self.window else [text]
            pieces += parts
            of += [i] * len(parts)
        logits = np.asarray(self.features(pieces) @ self.weight.T, dtype=float) + self.bias
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        of = np.asarray(of, dtype=int)
        out = np.zeros((len(texts), len(LABELS)))
        np.add.at(out, of, e / e.sum(1, keepdims=True))
        return out / np.bincount(of, minlength=len(texts))[:, None]

    def save(self, path: Path) -> None:
        write_npz(
            path,
            vocabulary=np.asarray(self.vocabulary, dtype=str),
            idf=self.idf,
            weight=self.weight,
            bias=self.bias,
            window=np.asarray(self.window),
            outlets=np.asarray(self.outlets, dtype=str),
        )

    @classmethod
    def load(cls, name: str) -> "LeaningModel":
        path = model_file(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"scoring.classifier.name: no offline leaning model at {path} (biasamp "
                f"classifier train writes one; for a Hugging Face model folder use kind: hf)"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                model = cls(
                    z["vocabulary"],
                    z["idf"],
                    z["weight"],
                    z["bias"],
                    int(z["window"]) if "window" in z else 0,
                    z["outlets"] if "outlets" in z else np.array([], dtype=str),
                )
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not an offline leaning model ({e})") from None
        if model.weight.shape != (len(LABELS), len(model.vocabulary)):
            raise ValueError(f"{path}: weight shape {model.weight.shape} does not match its vocabulary")
        return model


def fit(
    texts: list[str], labels, outlets, window: int = WINDOW, intercept: bool = False, seed: int = 0
) -> LeaningModel:
    """The recipe: features from whole articles; the regression on their training_windows, each
    article's windows sharing its weight (window 0: on whole articles, the recipe before windows)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(
        ngram_range=(1, 2), sublinear_tf=True, vocabulary=outlet_shared_vocabulary(texts, outlets), dtype=np.float32
    ).fit(texts)
    model = LeaningModel(
        np.asarray(vec.get_feature_names_out()),
        vec.idf_.astype(np.float32),
        None,
        None,
        window,
        np.unique(np.asarray(outlets, dtype=str)),
    )
    rng = np.random.default_rng(seed)
    pieces, y, weight = [], [], []
    for text, label, w in zip(texts, labels, outlet_weights(outlets)):
        parts = training_windows(text, window, rng) if window else [text]
        pieces += parts
        y += [label] * len(parts)
        weight += [w / len(parts)] * len(parts)
    model.weight, model.bias = logistic_regression(model.features(pieces), y, weight, intercept=intercept)
    return model


def training_windows(text: str, window: int, rng) -> list[str]:
    """Consecutive windows of the text (repeats read once) of random lengths, window / SHORTEST to
    5 window / 4 words, MAX_WINDOWS at most, and one more of the same words shuffled: the regression
    sees short and bigram-poor text of every label alike."""

    def length() -> int:
        return int(rng.integers(max(1, window // SHORTEST), window * 5 // 4))

    words, out, i = without_repeats(text).split(), [], 0
    while i < len(words) and len(out) < MAX_WINDOWS:
        k = length()
        out.append(" ".join(words[i : i + k]))
        i += k
    read = " ".join(out).split()
    k = length()
    start = int(rng.integers(0, max(len(read) - k, 1)))
    shuffled = read[start : start + k]
    rng.shuffle(shuffled)
    return (out or [""]) + [" ".join(shuffled)]


def _logistic(vec, texts: list[str], labels, weight=None) -> LeaningModel:
    """`vec` fitted on the texts, then logistic_regression on its features, as a LeaningModel."""
    x = vec.fit_transform(texts)
    return LeaningModel(
        np.asarray(vec.get_feature_names_out()), vec.idf_.astype(np.float32), *logistic_regression(x, labels, weight)
    )


def outlet_shared_vocabulary(texts: list[str], outlets) -> np.ndarray:
    """The word 1-2 grams used by at least MIN_OUTLETS of the texts' outlets."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    counts = CountVectorizer(ngram_range=(1, 2), min_df=3, binary=True, dtype=np.float32)
    present = counts.fit_transform(texts)
    codes, _ = pd.factorize(np.asarray(outlets))
    by_outlet = sparse.csr_matrix((np.ones(len(codes), np.float32), (codes, np.arange(len(codes))))) @ present
    used_by = np.bincount(by_outlet.nonzero()[1], minlength=present.shape[1])  # outlets that use each n-gram
    return counts.get_feature_names_out()[used_by >= min(MIN_OUTLETS, max(2, (codes.max() + 1) // 10))]


def outlet_weights(outlets, power: float = OUTLET_POWER) -> np.ndarray:
    """Per article: (articles of its outlet)^-power."""
    codes, _ = pd.factorize(np.asarray(outlets))
    return np.bincount(codes)[codes] ** -float(power)


def logistic_regression(x, labels, weight=None, c: float = C, intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression with per-article `weight` (default equal) rescaled so that
    every label weighs the same: weight (3, features) and bias (3,; zero without an intercept),
    rows in LABELS order."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels)
    weight = np.ones(len(labels)) if weight is None else np.asarray(weight, float).copy()
    for lab in LABELS:
        weight[labels == lab] *= len(labels) / len(LABELS) / weight[labels == lab].sum()
    lr = LogisticRegression(C=c, max_iter=2000, fit_intercept=intercept).fit(x, labels, sample_weight=weight)
    order = [list(lr.classes_).index(lab) for lab in LABELS]
    return lr.coef_[order].astype(np.float32), np.asarray(lr.intercept_, float)[order] if intercept else np.zeros(
        len(LABELS)
    )


def texts_of(df: pd.DataFrame) -> list[str]:
    return [training_text(t, b) for t, b in zip(df["title"], df["text"])]


def study_article_ids(configs: list[Path]) -> set[str]:
    """Articles that a study corpus may draw (the bundled slice and every corpus of `configs`): a
    classifier that had seen them would score the study's own real articles from memory."""
    ids = set(read_source("bundled")["article_id"])
    for path in configs:
        cfg = load_config(path, [])
        for name, corpus in cfg.corpora.items():
            ids |= set(sample_corpus(read_source(corpus.source), corpus, name)["article_id"])
    return ids


def training_pool(data: Path, exclude: set[str], per_outlet: int = PER_OUTLET, seed: int = 0) -> pd.DataFrame:
    """Every article of `data` not in `exclude`, at most per_outlet per outlet (a seeded draw)."""
    df = read_source(str(data))
    df = df[~df["article_id"].isin(exclude) & (df["text"].str.strip() != "")].drop_duplicates("article_id")
    df = df.sample(frac=1.0, random_state=seed)
    return df.groupby("outlet", sort=False).head(per_outlet).sort_values("article_id").reset_index(drop=True)


def outlet_folds(pool: pd.DataFrame, k: int = FOLDS) -> np.ndarray:
    """Fold index per article; every outlet in exactly one fold."""
    from sklearn.model_selection import GroupKFold

    fold = np.empty(len(pool), dtype=int)
    for i, (_, test) in enumerate(GroupKFold(min(k, pool["outlet"].nunique())).split(pool, groups=pool["outlet"])):
        fold[test] = i
    return fold


def cross_fit(texts: list[str], outlets: np.ndarray, folds: np.ndarray, fit_fold, log=print) -> np.ndarray:
    """Out-of-fold probabilities (n, 3): fold k scored by `fit_fold(train_index)` (a model)."""
    out = np.zeros((len(texts), len(LABELS)))
    for k in np.unique(folds):
        model = fit_fold(np.flatnonzero(folds != k))
        test = np.flatnonzero(folds == k)
        out[test] = model.probabilities([texts[i] for i in test])
        log(f"fold {k + 1}/{folds.max() + 1}: {len(test)} articles from {len(set(outlets[test]))} held-out outlets")
    return out


def check_outlets(pool: pd.DataFrame, share: float = CHECK_SHARE, seed: int = 0) -> set[str]:
    """Outlets held out of training for `biasamp classifier check`: per label, outlets in a seeded
    order until they hold `share` of the label's articles (one at least)."""
    held: set[str] = set()
    for _, part in pool.groupby("source_label", sort=True):
        sizes = part.groupby("outlet").size().sample(frac=1.0, random_state=seed)
        held |= set(sizes.index[: max(1, int((sizes.cumsum() <= share * len(part)).sum()))])
    return held


def unseen_pools(data: Path, exclude: set[str], model: "LeaningModel", min_words: int, seed: int = 0):
    """Articles of `data` over min_words words that `model` never read: {"training outlets": those of
    the outlets it trained on that its training pool left out (what a fine-tuned generator imitates),
    "held-out outlets": those of every other outlet}. The pool is redrawn as `train` drew it (`exclude`,
    `seed`); a model trained on other outlets than that pool's is refused."""
    pool = training_pool(data, exclude, seed=seed)
    trained = set(pool["outlet"]) - check_outlets(pool, seed=seed)
    if trained != set(model.outlets):
        raise ValueError(
            f"{data}: this model was not trained on its pool ({len(exclude)} articles excluded, seed {seed})"
        )
    read = set(pool.loc[pool["outlet"].isin(trained), "article_id"])
    df = read_source(str(data)).drop_duplicates("article_id")
    df = df[~df["article_id"].isin(read) & (df["text"].str.split().str.len() >= min_words)]
    seen = df["outlet"].isin(trained)
    return {"training outlets": df[seen].reset_index(drop=True), "held-out outlets": df[~seen].reset_index(drop=True)}


def train(data: Path, exclude: set[str], seed: int = 0, log=print) -> tuple[LeaningModel, pd.DataFrame]:
    """The shipped model (fitted on the pool less the check's outlets) and its calibration table
    (cross-fitted on the same articles)."""
    pool = training_pool(data, exclude, seed=seed)
    held = check_outlets(pool, seed=seed)
    log(f"{len(held)} outlets ({pool['outlet'].isin(held).sum()} pool articles) held out for `classifier check`")
    pool = pool[~pool["outlet"].isin(held)].reset_index(drop=True)
    texts, y, outlets = texts_of(pool), pool["source_label"].to_numpy(), pool["outlet"].to_numpy()
    log(
        f"pool: {len(pool)} articles {pool['source_label'].value_counts().to_dict()} from {pool['outlet'].nunique()} "
        f"outlets ({len(exclude)} study-corpus articles excluded)"
    )
    oof = cross_fit(
        texts, outlets, outlet_folds(pool), lambda idx: fit([texts[i] for i in idx], y[idx], outlets[idx]), log
    )
    return fit(texts, y, outlets), prevalence.calibration_table(oof, y, outlets)


# --- evaluation --------------------------------------------------------------------------------


def article_report(y_true, probs: np.ndarray, folds: np.ndarray) -> dict:
    """Macro-F1 averaged over held-out folds, per-class figures and the confusion over all of them."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    pred = np.asarray(LABELS)[probs.argmax(1)]
    per_fold = [
        f1_score(y_true[folds == k], pred[folds == k], labels=LABELS, average="macro", zero_division=0)
        for k in np.unique(folds)
    ]
    p, r, f, n = precision_recall_fscore_support(y_true, pred, labels=LABELS, zero_division=0)
    return {
        "macro_f1": float(np.mean(per_fold)),
        "macro_f1_folds": [float(v) for v in per_fold],
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "n": int(n[i])}
            for i, lab in enumerate(LABELS)
        },
        "confusion": {"rows_true_cols_pred": LABELS, "matrix": confusion_matrix(y_true, pred, labels=LABELS).tolist()},
    }


def prevalence_benchmark(
    pool: pd.DataFrame, folds: np.ndarray, probs: dict[str, np.ndarray], repeats: int, seed: int = 0, n_boot: int = 500
) -> pd.DataFrame:
    """Corpora of BENCH_SIZE articles with known mixes (BENCH_MIXES), each drawn from one fold's
    held-out outlets; per classifier (`probs`: out-of-fold probabilities) and method, the estimated
    shares with the confusion taken from the other folds only. One row per corpus, label, classifier
    and method: true, estimate, lo, hi."""
    rng = np.random.default_rng(seed)
    y = pool["source_label"].to_numpy()
    rows = []
    for k in np.unique(folds):
        cals = {
            name: prevalence.calibration_table(p[folds != k], y[folds != k], pool["outlet"].to_numpy()[folds != k])
            for name, p in probs.items()
        }
        held = {lab: np.flatnonzero((folds == k) & (y == lab)) for lab in LABELS}
        for mix in BENCH_MIXES:
            counts = np.round(np.array(mix) * BENCH_SIZE).astype(int)
            for rep in range(repeats):
                # with replacement only where a fold holds fewer articles of a label than the mix asks for
                pick = np.concatenate(
                    [rng.choice(held[lab], c, replace=len(held[lab]) < c) for lab, c in zip(LABELS, counts)]
                )
                true = counts / counts.sum()
                for name, p in probs.items():
                    for method in prevalence.METHODS:
                        v = prevalence.article_values(p[pick], method)
                        draws = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
                        est, lo, hi = prevalence.estimate(v.mean(0), draws, cals[name], method, rng, len(v))
                        rows += [
                            {
                                "fold": int(k),
                                "mix": "/".join(f"{m:.2f}" for m in mix),
                                "repeat": rep,
                                "classifier": name,
                                "method": method,
                                "label": lab,
                                "true": true[i],
                                "estimate": est[i],
                                "lo": lo[i],
                                "hi": hi[i],
                            }
                            for i, lab in enumerate(LABELS)
                        ]
    return pd.DataFrame(rows)


def baseline_fit(texts: list[str], labels) -> LeaningModel:
    """The baseline the issue measured: TF-IDF (word 1-2 grams, min_df 3, top 200k) + class-balanced
    logistic regression, every training article, no outlet-aware choices."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return _logistic(
        TfidfVectorizer(ngram_range=(1, 2), min_df=3, max_features=200_000, sublinear_tf=True, dtype=np.float32),
        texts,
        labels,
    )


def evaluate(
    data: Path, exclude: set[str], extra: dict | None = None, repeats: int = 5, seed: int = 0, log=print
) -> tuple[dict, pd.DataFrame, dict[str, np.ndarray], pd.DataFrame]:
    """Leave-outlets-out evaluation of the shipped recipe and the baseline (and of `extra`: name ->
    a classifier with `probabilities`, e.g. a hub model, which is scored as it is, not refitted).

    Returns the report, the prevalence benchmark rows, the out-of-fold probabilities per classifier,
    and the pool they belong to."""
    pool = training_pool(data, exclude, seed=seed)
    folds = outlet_folds(pool)
    texts, y, outlets = texts_of(pool), pool["source_label"].to_numpy(), pool["outlet"].to_numpy()
    log(
        f"pool: {len(pool)} articles {pool['source_label'].value_counts().to_dict()} from {pool['outlet'].nunique()} "
        f"outlets in {folds.max() + 1} outlet-grouped folds"
    )
    everything = read_source(str(data))
    everything = everything[~everything["article_id"].isin(exclude)]
    full_outlets = everything["outlet"].to_numpy()

    def baseline_fold(idx):  # every article of the training folds' outlets, uncapped
        train_outlets = set(outlets[idx])
        part = everything[np.isin(full_outlets, list(train_outlets))]
        return baseline_fit(texts_of(part), part["source_label"])

    probs = {
        "shipped": cross_fit(texts, outlets, folds, lambda idx: fit([texts[i] for i in idx], y[idx], outlets[idx]), log)
    }
    log("baseline (TF-IDF + LR, all articles of the training outlets)")
    probs["tfidf_baseline"] = cross_fit(texts, outlets, folds, baseline_fold, log)
    for name, clf in (extra or {}).items():
        log(f"{name}: scoring {len(pool)} articles")
        probs[name] = clf.probabilities(texts, 16)
    bench = prevalence_benchmark(pool, folds, probs, repeats, seed)
    report = {
        "pool_articles": len(pool),
        "outlets": int(pool["outlet"].nunique()),
        "folds": int(folds.max() + 1),
        "articles": {name: article_report(y, p, folds) for name, p in probs.items()},
        "prevalence": bench_summary(bench).to_dict(orient="records"),
    }
    return report, bench, probs, pool


def bench_summary(bench: pd.DataFrame) -> pd.DataFrame:
    """Per classifier and method: MAE of the shares, the worst error, CI coverage and mean width, and
    how the estimate responds to the truth: slope and correlation of estimated on true shares."""
    b = bench.assign(
        err=(bench["estimate"] - bench["true"]).abs(),
        covered=(bench["lo"] <= bench["true"]) & (bench["true"] <= bench["hi"]),
        width=bench["hi"] - bench["lo"],
    )
    rows = []
    for (name, method), part in b.groupby(["classifier", "method"], sort=False):
        rows.append(
            {
                "classifier": name,
                "method": method,
                "corpora": len(part) // len(LABELS),
                "mae": part["err"].mean(),
                "max_error": part["err"].max(),
                "coverage": part["covered"].mean(),
                "ci_width": part["width"].mean(),
                "slope": np.polyfit(part["true"], part["estimate"], 1)[0],
                "r": np.corrcoef(part["true"], part["estimate"])[0, 1],
            }
        )
    return pd.DataFrame(rows)


def write_model(model: LeaningModel, calibration: pd.DataFrame, out: Path) -> None:
    from biasamp.tables import write_parquet

    model.save(out)
    write_parquet(calibration, calibration_path(out))
