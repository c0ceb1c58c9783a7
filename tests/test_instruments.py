"""The offline instruments: MiniLM-L6 + logistic leaning head, and the text-quality proxy."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from biasamp.instruments import leaning
from biasamp.cli import app
from biasamp.config import LABELS, ClassifierConfig, ModelConfig, QualityConfig, ScoringConfig
from biasamp.stages.corpus import read_source
from biasamp.instruments.quality import QualityProxy, corrupted_sentences
from biasamp.tables import TABLES
from biasamp.instruments.hf import class_probabilities, load_classifier
from biasamp.stages.score import load_instruments, score_articles
from biasamp.instruments.quality import quality_index

TINY = ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe", tiny={"n_layer": 1, "n_embd": 32, "n_head": 2})


@pytest.fixture(autouse=True)
def embedding_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(leaning, "CACHE", tmp_path / "embeddings")


def test_defaults_are_offline_and_hub_names_stay_available():
    assert (ClassifierConfig().kind, ClassifierConfig().name) == ("offline", "bundled")
    assert ClassifierConfig(kind="hf").name == "wu981526092/bias_classifier_roberta"
    assert QualityConfig(kind="hf").name == "madhurjindal/autonlp-Gibberish-Detector-492513457"


def test_scoring_module_equals_training_path():
    """What scoring computes (torch module, batched, padded) is what the head was fitted on
    (cached embeddings, numpy): the same labels, probabilities summing to one."""
    articles = read_source("bundled").head(6)
    texts = leaning.texts_of(articles)
    clf = load_classifier("offline", "bundled", {}, 0, TINY, "classifier")
    probs = class_probabilities(clf, texts, batch_size=4)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    head = leaning.load_head("bundled")
    x = leaning.embeddings(texts, head["max_tokens"], batch_size=1)  # one at a time: no padding
    assert list(np.asarray(clf.labels)[probs.argmax(1)]) == list(leaning.predict(head, x))
    logits = x @ np.asarray(head["weight"]).T + np.asarray(head["bias"])
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-4)


def test_fit_head_folds_the_scaler_into_one_linear_layer():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = np.repeat(np.array(LABELS), 40)
    x = rng.normal(size=(120, 384)) * rng.uniform(0.01, 3, 384) + (y[:, None] == "right") * 0.5
    head = leaning.fit_head(x, y, c=0.1)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000)).fit(x, y)
    assert (leaning.predict(head, x) == ref.predict(x)).mean() > 0.99  # std ddof/epsilon aside, the same model


def test_balanced_sample_spreads_each_label_over_its_outlets():
    df = pd.DataFrame({"source_label": ["left"] * 105 + ["center"] * 10 + ["right"] * 10,
                       "outlet": ["big"] * 100 + ["small"] * 5 + ["c"] * 10 + ["r"] * 10})
    s = leaning.balanced_sample(df, 10, seed=0)
    assert s[s.source_label == "left"]["outlet"].value_counts().to_dict() == {"big": 5, "small": 5}


def _abp_folder(root, n_outlets_valid=3):
    """A small Article-Bias-Prediction-style folder (ids renamed so the bundled slice's exclusion
    does not apply), with a media split whose validation outlets are partly seen in train."""
    df = read_source("bundled")
    outlets = [f"outlet{i % 12}" for i in range(len(df))]
    rows = [{"ID": f"t{a}", "title": t, "content_original": x, "source": o, "bias_text": lab, "date": "2016-01-01"}
            for a, t, x, o, lab in zip(df.article_id, df.title, df.text, outlets, df.source_label)]
    (root / "splits" / "media").mkdir(parents=True)
    with gzip.open(root / "articles.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    valid = [r["ID"] for r in rows if r["source"] in {f"outlet{i}" for i in range(n_outlets_valid)}]
    train = [r["ID"] for r in rows if r["ID"] not in valid]
    valid.append(train.pop())  # a validation article from an outlet that train has: must be dropped
    for name, ids in (("train", train), ("valid", valid)):
        pd.DataFrame({"ID": ids, "bias": 0}).to_csv(root / "splits" / "media" / f"{name}.tsv", sep="\t", index=False)
    return rows


def test_classifier_train_and_eval_commands(tmp_path):
    rows = _abp_folder(tmp_path / "abp")
    head_file, report = tmp_path / "head.json", tmp_path / "report.json"
    r = CliRunner().invoke(app, ["classifier", "train", "--data", str(tmp_path / "abp"), "--out", str(head_file),
                                 "--per-label", "10", "--exclude-study", "configs/quickstart.yaml"])
    assert r.exit_code == 0, r.output
    head = json.loads(head_file.read_text())
    assert head["n_train"] == 30 and head["labels"] == list(LABELS)
    r = CliRunner().invoke(app, ["classifier", "eval", "--data", str(tmp_path / "abp"), "--head", str(head_file),
                                 "--exclude-study", "configs/quickstart.yaml", "--out", str(report)])
    assert r.exit_code == 0, r.output
    assert "minilm_head" in r.output and "tfidf_baseline" in r.output
    result = json.loads(report.read_text())
    unseen = {"outlet0", "outlet1", "outlet2"}
    assert set(result["eval_outlets"]) == unseen
    assert result["eval_articles"] == sum(r["source"] in unseen for r in rows)
    for name in ("minilm_head", "tfidf_baseline"):
        assert 0 <= result[name]["macro_f1"] <= 1
        assert sum(map(sum, result[name]["confusion"]["matrix"])) == result["eval_articles"]


def test_classifier_eval_names_a_missing_split(tmp_path):
    r = CliRunner().invoke(app, ["classifier", "eval", "--data", str(tmp_path), "--exclude-study", "configs/quickstart.yaml"])
    assert r.exit_code == 2 and "articles.jsonl.gz" in r.output


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
    r = CliRunner().invoke(app, ["quality", "train", "--data", str(tmp_path / "abp"), "--out", str(out),
                                 "--exclude-study", "configs/quickstart.yaml"])
    assert r.exit_code == 0, r.output
    proxy = QualityProxy.load(str(out))
    assert proxy.probabilities(["The vote was held on Tuesday."]).shape == (1, 4)


def test_offline_instruments_fill_the_scores_table():
    articles = read_source("bundled").head(4).assign(study="s", arm="a", seed=0, generation=0)
    inst = load_instruments(ScoringConfig(batch_size=2), TINY)
    scores = score_articles(inst, articles)
    assert list(scores.columns) == list(TABLES["scores"].columns)
    assert scores["label"].isin(LABELS).all() and scores["tqi"].between(0, 3).all()
    assert scores["ppl_ref"].notna().all()
