"""The offline instruments: the TF-IDF leaning classifier, its prevalence estimate, and the text-quality proxy."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from typer.testing import CliRunner

from biasamp.cli import app
from biasamp.config import LABELS, ClassifierConfig, ModelConfig, QualityConfig, ScoringConfig
from biasamp.corpus import read_source
from biasamp.instruments import leaning, load_classifier, prevalence
from biasamp.instruments.quality import QualityProxy, corrupted_sentences, quality_index
from biasamp.stages.score import load_instruments, score_articles
from biasamp.tables import TABLES

TINY = ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe", tiny={"n_layer": 1, "n_embd": 32, "n_head": 2})


def test_defaults_are_offline_and_hub_names_stay_available():
    assert (ClassifierConfig().kind, ClassifierConfig().name) == ("offline", "bundled")
    assert ClassifierConfig(kind="hf").name == "wu981526092/bias_classifier_roberta"
    assert QualityConfig(kind="hf").name == "madhurjindal/autonlp-Gibberish-Detector-492513457"


def _abp_folder(root, n_outlets_valid=3):
    """A small Article-Bias-Prediction-style folder (ids renamed so the bundled slice's exclusion
    does not apply), with a media split whose validation outlets are partly seen in train."""
    df = read_source("bundled")
    outlets = [f"outlet{i % 12}" for i in range(len(df))]
    rows = [
        {"ID": f"t{a}", "title": t, "content_original": x, "source": o, "bias_text": lab, "date": "2016-01-01"}
        for a, t, x, o, lab in zip(df.article_id, df.title, df.text, outlets, df.source_label)
    ]
    (root / "splits" / "media").mkdir(parents=True)
    with gzip.open(root / "articles.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    valid = [r["ID"] for r in rows if r["source"] in {f"outlet{i}" for i in range(n_outlets_valid)}]
    train = [r["ID"] for r in rows if r["ID"] not in valid]
    valid.append(train.pop())  # a validation article from an outlet that train has: must be dropped
    for name, ids in (("train", train), ("valid", valid)):
        pd.DataFrame({"ID": ids, "bias": 0}).to_csv(root / "splits" / "media" / f"{name}.tsv", sep="\t", index=False)
    return rows


def test_quality_proxy_separates_levels_and_flags_loops():
    """On articles the shipped proxy never saw (the bundled slice is excluded from its fit)."""
    from sklearn.metrics import roc_auc_score

    proxy = QualityProxy.load("bundled")
    texts = list(read_source("bundled")["text"])
    sents, owner, y = corrupted_sentences(texts, proxy, seed=7)
    expected = proxy.probabilities(sents, 0, owner) @ np.arange(4.0)
    aucs = [roc_auc_score(y[np.isin(y, [k, k + 1])] == k + 1, expected[np.isin(y, [k, k + 1])]) for k in range(3)]
    assert aucs[0] > 0.95 and aucs[1] > 0.75 and aucs[2] > 0.6, aucs
    clean = texts[:40]
    loops = [" ".join([t.split(". ")[0] + "."] * 8) for t in clean]
    tqi_clean, tqi_loop = quality_index(proxy, clean, 0).mean(), quality_index(proxy, loops, 0).mean()
    assert tqi_clean > 2.0 and tqi_loop < tqi_clean - 0.8, (tqi_clean, tqi_loop)


def test_quality_train_command_writes_a_loadable_proxy(tmp_path):
    _abp_folder(tmp_path / "abp")
    out = tmp_path / "proxy.npz"
    r = CliRunner().invoke(
        app,
        [
            "quality",
            "train",
            "--data",
            str(tmp_path / "abp"),
            "--out",
            str(out),
            "--exclude-study",
            "configs/quickstart.yaml",
        ],
    )
    assert r.exit_code == 0, r.output
    proxy = QualityProxy.load(str(out))
    assert proxy.probabilities(["The vote was held on Tuesday."]).shape == (1, 4)


def test_offline_instruments_fill_the_scores_table():
    real = read_source("bundled")
    articles = real.head(4).assign(study="s", arm="a", seed=0, generation=0)
    inst = load_instruments(ScoringConfig(batch_size=2), TINY)
    scores = score_articles(inst, articles, real)
    assert list(scores.columns) == list(TABLES["scores"].columns)
    assert scores["label"].isin(LABELS).all() and scores["tqi"].between(0, 3).all()
    assert scores["ppl_ref"].notna().all()
    # the summaries' corrected shares come with the offline classifier's own calibration
    from biasamp.stages.summarize import summarize

    row = summarize(scores, 50, calibration=inst.calibration, method="pacc")[0].iloc[0]
    prev = [row[f"prev_{lab}"] for lab in LABELS]
    assert inst.calibration is not None and sum(prev) == pytest.approx(1.0)
    assert all(row[f"prev_{lab}_lo"] <= row[f"prev_{lab}"] <= row[f"prev_{lab}_hi"] for lab in LABELS)


# --- the offline leaning classifier -----------------------------------------------------------


def _articles(n_outlets=12, per_outlet=15, seed=0):
    """Articles whose label shows in shared words, plus a word only their outlet uses."""
    rng = np.random.default_rng(seed)
    words = {"left": "union climate equality", "center": "budget report committee", "right": "taxes border liberty"}
    rows = []
    for o in range(n_outlets):
        lab = LABELS[o % 3]
        for a in range(per_outlet):
            body = " ".join(rng.choice(("the vote on the bill " + words[lab] + " said officials").split(), 40))
            rows.append(
                {
                    "article_id": f"o{o}a{a}",
                    "title": f"story {a}",
                    "text": f"{body} outletword{o}",
                    "source_label": lab,
                    "outlet": f"outlet{o}",
                }
            )
    return pd.DataFrame(rows)


def test_leaning_model_learns_shared_words_and_survives_save_and_load(tmp_path):
    df = _articles()
    model = leaning.fit(leaning.texts_of(df), df["source_label"], df["outlet"])
    vocab = set(model.vocabulary)
    assert {"union", "taxes", "budget"} <= vocab
    assert not any(w.startswith("outletword") for w in vocab)  # one outlet's word is style, not leaning
    texts = ["title: x\nbody: union climate equality union", "title: y\nbody: taxes border liberty taxes"]
    probs = model.probabilities(texts)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert list(np.asarray(LABELS)[probs.argmax(1)]) == ["left", "right"]
    model.save(tmp_path / "m.npz")
    np.testing.assert_allclose(
        leaning.LeaningModel.load(str(tmp_path / "m.npz")).probabilities(texts), probs, rtol=1e-6
    )
    clf = load_classifier("offline", str(tmp_path / "m.npz"), {}, 0, TINY, "classifier")
    np.testing.assert_allclose(clf.probabilities(texts), probs, rtol=1e-6)
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.npz: not an offline leaning model"):
        leaning.LeaningModel.load(str(tmp_path / "bad.npz"))


def test_shipped_model_and_calibration_load():
    model = leaning.LeaningModel.load("bundled")
    cal = prevalence.read_calibration(leaning.calibration_path("bundled"))
    assert len(model.vocabulary) > 1000 and set(cal["label"]) == set(LABELS)
    m, _ = prevalence.confusion_draws(cal, "pacc", 2, np.random.default_rng(0))
    np.testing.assert_allclose(m.sum(0), 1.0)
    assert (np.diag(m) > 1 / 3).all()  # better than chance on held-out outlets, for every label


# --- the prevalence estimate ------------------------------------------------------------------


def _calibration(m, outlets_per_label=40, per_outlet=50, jitter=0.0, seed=0):
    """A calibration table from a known confusion M (columns: true label): each outlet's articles
    output probability vectors whose mean is that outlet's column (M's, jittered per outlet)."""
    rng = np.random.default_rng(seed)
    probs, labels, outlets = [], [], []
    for i, lab in enumerate(LABELS):
        for o in range(outlets_per_label):
            col = rng.dirichlet(m[:, i] * (1 / jitter if jitter else 1e6))
            probs.append(rng.dirichlet(col * 20, size=per_outlet))
            labels += [lab] * per_outlet
            outlets += [f"{lab}{o}"] * per_outlet
    return prevalence.calibration_table(np.vstack(probs), labels, outlets)


M = np.array([[0.6, 0.25, 0.2], [0.2, 0.45, 0.2], [0.2, 0.3, 0.6]])  # compresses every mix toward the middle


def _corpus(m, mix, n, rng):
    """Outputs for n articles drawn from `mix`, and the corpus's own true shares."""
    counts = rng.multinomial(n, mix)
    return np.vstack([rng.dirichlet(m[:, i] * 20, size=c) for i, c in enumerate(counts)]), counts / n


@pytest.mark.parametrize("mix", [(0.6, 0.2, 0.2), (0.15, 0.7, 0.15), (0.2, 0.2, 0.6)])
def test_prevalence_recovers_planted_shares_that_counting_misses(mix):
    rng = np.random.default_rng(1)
    cal = _calibration(M)
    probs, true = _corpus(M, mix, 3000, rng)
    for method in ("pacc", "acc"):
        v = prevalence.article_values(probs, method)
        draws = v[rng.integers(0, len(v), (300, len(v)))].mean(1)
        est, lo, hi = prevalence.estimate(v.mean(0), draws, cal, method, rng, len(v))
        np.testing.assert_allclose(est, true, atol=0.04)
        assert (lo <= true).all() and (true <= hi).all()
        assert est.sum() == pytest.approx(1.0)
    assert np.abs(probs.mean(0) - true).max() > 0.08  # uncorrected, the mean output is pulled toward the middle


def test_prevalence_intervals_cover_at_the_nominal_rate():
    """Corpora of 300 articles, calibration outlets that differ from each other: the 95% CI, which
    resamples both, covers the true share in about 95% of cases."""
    rng = np.random.default_rng(2)
    covered = []
    for rep in range(60):
        cal = _calibration(M, outlets_per_label=30, per_outlet=20, jitter=0.02, seed=rep)
        probs, true = _corpus(M, rng.dirichlet([2, 2, 2]), 300, rng)
        v = prevalence.article_values(probs, "pacc")
        est, lo, hi = prevalence.estimate(v.mean(0), v[rng.integers(0, 300, (300, 300))].mean(1), cal, "pacc", rng, 300)
        covered += list((lo <= true) & (true <= hi))
    assert 0.88 <= np.mean(covered) <= 1.0, np.mean(covered)


SIZES = np.array([300] * 4 + [20] * 30)  # articles per outlet of one label: a few big outlets, many small, as in ABP


def _outlets(m, jitter, rng):
    """Per label, the mean outputs of len(SIZES) outlets: M's column, jittered per outlet."""
    return [rng.dirichlet(m[:, i] / jitter, size=len(SIZES)) for i in range(len(LABELS))]


def _outputs(outlet_means, counts, rng):
    return np.vstack([np.zeros((0, 3))] + [rng.dirichlet(outlet_means[o] * 20, size=c) for o, c in enumerate(counts)])


def test_prevalence_intervals_cover_when_the_corpus_comes_from_unseen_outlets():
    """Planted shift: the calibration's outlets and each corpus's (new ones, drawn alike) shift the
    classifier's mean output per outlet (sd ~0.06). The CI covers at about the nominal rate; the same
    bootstrap without the corpus's own outlet draw (how well M is known, and article sampling) is too
    narrow."""
    rng = np.random.default_rng(3)
    covered, covered_without = [], []
    for rep in range(100):
        outlets = _outlets(M, 0.02, rng)
        cal = prevalence.calibration_table(
            np.vstack([_outputs(outlets[i], SIZES, rng) for i in range(3)]),
            np.repeat(LABELS, SIZES.sum()),
            np.repeat(np.arange(3 * len(SIZES)), np.tile(SIZES, 3)),
        )
        counts, unseen = rng.multinomial(300, rng.dirichlet([2, 2, 2])), _outlets(M, 0.02, rng)
        probs = np.vstack(
            [_outputs(unseen[i], rng.multinomial(c, SIZES / SIZES.sum()), rng) for i, c in enumerate(counts)]
        )
        true, v = counts / 300, prevalence.article_values(probs, "pacc")
        draws = v[rng.integers(0, 300, (300, 300))].mean(1)
        est, lo, hi = prevalence.estimate(v.mean(0), draws, cal, "pacc", rng, 300)
        covered += list((lo <= true) & (true <= hi))
        _, m_draws = prevalence.confusion_draws(cal, "pacc", 300, rng)  # without the corpus term
        lo0, hi0 = np.percentile([prevalence.adjust(a, b) for a, b in zip(draws, m_draws)], [2.5, 97.5], axis=0)
        covered_without += list((lo0 <= true) & (true <= hi0))
    assert 0.9 <= np.mean(covered) <= 0.99, np.mean(covered)
    assert np.mean(covered_without) < np.mean(covered) - 0.05, (np.mean(covered_without), np.mean(covered))


def test_prevalence_is_empty_without_a_calibration_and_read_checks_the_table(tmp_path):
    est, lo, hi = prevalence.estimate(
        np.full(3, 1 / 3), np.full((10, 3), 1 / 3), None, "pacc", np.random.default_rng(0), 10
    )
    assert np.isnan(est).all() and np.isnan(lo).all()
    with pytest.raises(FileNotFoundError, match="scoring.classifier.calibration: no calibration table"):
        prevalence.read_calibration(tmp_path / "none.parquet")
    pd.DataFrame({"outlet": ["a"], "label": ["left"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet: not a calibration table"):
        prevalence.read_calibration(tmp_path / "bad.parquet")


def test_classify_summary_file(tmp_path):
    src = tmp_path / "arts.jsonl"
    read_source("bundled").head(30).to_json(src, orient="records", lines=True)
    out, summary = tmp_path / "out.parquet", tmp_path / "s.json"
    r = CliRunner().invoke(
        app, ["classify", str(src), "--out", str(out), "--summary", str(summary), "--bootstrap", "50"]
    )
    assert r.exit_code == 0, r.output
    s = json.loads(summary.read_text())
    assert s["n"] == 30 and s["method"] == "pcc"
    scored = pd.read_parquet(out)
    for lab in LABELS:
        assert s["argmax_share"][lab] == pytest.approx((scored["label"] == lab).mean())
        p = s["prevalence"][lab]
        assert 0 <= p["lo"] <= p["estimate"] <= p["hi"] <= 1
    assert sum(s["prevalence"][lab]["estimate"] for lab in LABELS) == pytest.approx(1.0)
    assert {"title", "source_label", "outlet"} <= set(scored.columns)  # the input's columns are kept


def test_classifier_train_and_eval_commands(tmp_path, local_classifier):
    rows = _abp_folder(tmp_path / "abp")
    model_file, report = tmp_path / "m.npz", tmp_path / "report.json"
    r = CliRunner().invoke(
        app,
        [
            "classifier",
            "train",
            "--data",
            str(tmp_path / "abp"),
            "--out",
            str(model_file),
            "--exclude-study",
            "configs/quickstart.yaml",
        ],
    )
    assert r.exit_code == 0, r.output
    cal = prevalence.read_calibration(leaning.calibration_path(model_file))
    held = set(map(str, leaning.LeaningModel.load(str(model_file)).outlets)) ^ {f"outlet{i}" for i in range(12)}
    assert 1 <= len(held) < 12  # outlets kept out of training for `classifier check`
    assert cal["n"].sum() == sum(r["source"] not in held for r in rows) and cal["outlet"].nunique() == 12 - len(held)
    np.testing.assert_allclose(cal[prevalence.POST].sum(axis=1), cal["n"], rtol=1e-6)
    # The benches' articles the model never read: none of a trained outlet's here (the pool took them
    # all), every one of the held-out outlets'; a model trained on another pool is refused.
    model = leaning.LeaningModel.load(str(model_file))
    exclude = leaning.study_article_ids([ROOT / "configs" / "quickstart.yaml"])
    pools = leaning.unseen_pools(tmp_path / "abp", exclude, model, min_words=0)
    assert pools["training outlets"].empty
    assert sorted(pools["held-out outlets"]["article_id"]) == sorted(r["ID"] for r in rows if r["source"] in held)
    with pytest.raises(ValueError, match="not trained on its pool"):
        leaning.unseen_pools(tmp_path / "abp", exclude, leaning.LeaningModel.load("bundled"), min_words=0)
    cal_hf = tmp_path / "hf_cal.parquet"
    r = CliRunner().invoke(
        app,
        [
            "classifier",
            "eval",
            "--data",
            str(tmp_path / "abp"),
            "--exclude-study",
            "configs/quickstart.yaml",
            "--out",
            str(report),
            "--repeats",
            "1",
            "--kind",
            "hf",
            "--model",
            str(local_classifier),
            "--calibration-out",
            str(cal_hf),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "shipped" in r.output and "tfidf_baseline" in r.output and "pacc" in r.output
    result = json.loads(report.read_text())
    assert result["pool_articles"] == len(rows) and result["folds"] == 5
    for name in ("shipped", "tfidf_baseline", str(local_classifier)):
        art = result["articles"][name]
        assert 0 <= art["macro_f1"] <= 1 and len(art["macro_f1_folds"]) == 5
        assert sum(map(sum, art["confusion"]["matrix"])) == len(rows)
    bench = pd.read_parquet(report.with_suffix(".prevalence.parquet"))
    assert set(bench["method"]) == set(prevalence.METHODS) and len(bench) == 5 * 4 * 3 * len(prevalence.METHODS) * 3
    assert prevalence.read_calibration(cal_hf)["n"].sum() == len(rows)


def test_classifier_eval_names_a_missing_folder(tmp_path):
    r = CliRunner().invoke(
        app, ["classifier", "eval", "--data", str(tmp_path / "nope"), "--exclude-study", "configs/quickstart.yaml"]
    )
    assert r.exit_code == 2 and "nope" in r.output
