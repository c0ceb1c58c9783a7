from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from biasamp.config import ClassifierConfig, ModelConfig
from biasamp.instruments import load_classifier
from biasamp.instruments.hf import class_probabilities, leaning
from biasamp.instruments.quality import quality_index
from biasamp.models import load_base_model, load_tokenizer, perplexities
from biasamp.stages.summarize import import_paper, summarize
from biasamp.tables import TABLES
from biasamp.text import sentences

TINY = ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe")
PAPER = (
    Path(__file__).parents[1].parent / "shared" / "data" / "paper-results" / "Bias_Performance_and_Generation_Quality"
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TINY)


def test_hub_classifier_from_local_dir_with_the_authors_label_map(local_classifier):
    cfg = ClassifierConfig(name=str(local_classifier))  # LABEL_0 right, LABEL_1 left, LABEL_2 center
    clf = load_classifier("hf", cfg.name, cfg.labels, cfg.max_tokens, TINY, "classifier")
    texts = ["The senator said taxes must fall.", "Climate policy and unions.", "A short one", "x " * 900]
    raw = class_probabilities(clf, texts, batch_size=3)
    df = leaning(clf, texts, batch_size=3)
    np.testing.assert_allclose(df["p_right"], raw[:, 0])
    np.testing.assert_allclose(df["p_left"], raw[:, 1])
    np.testing.assert_allclose(df["p_center"], raw[:, 2])
    np.testing.assert_allclose(df[["p_left", "p_center", "p_right"]].sum(axis=1), 1.0)
    assert list(df["label"]) == [["right", "left", "center"][i] for i in raw.argmax(axis=1)]
    # one text at a time, no padding: the same probabilities
    single = np.vstack([class_probabilities(clf, [t], batch_size=1) for t in texts])
    np.testing.assert_allclose(single, raw, atol=1e-6)


def test_label_map_and_load_errors_name_the_key(local_classifier):
    with pytest.raises(ValueError, match=r"scoring.classifier.labels: no mapping for model label\(s\) \['LABEL_2'\]"):
        load_classifier("hf", str(local_classifier), {"LABEL_0": "right", "LABEL_1": "left"}, 500, TINY, "classifier")
    with pytest.raises(ValueError, match=r"scoring.quality.name: cannot load 'no-such-org/no-such-model'"):
        load_classifier("hf", "no-such-org/no-such-model", {"clean": 3}, 500, TINY, "quality")
    with pytest.raises(ValueError, match="once each"):
        ClassifierConfig(labels={"LABEL_0": "right", "LABEL_1": "right", "LABEL_2": "center"})


def test_quality_index_is_the_mean_expected_level_over_sentences(local_classifier):
    clf = load_classifier("hf", str(local_classifier), {"LABEL_0": 0, "LABEL_1": 3, "LABEL_2": 2}, 512, TINY, "quality")
    text = "First sentence here. Second one!\nThird line without stop"
    assert sentences(text) == ["First sentence here.", "Second one!", "Third line without stop"]
    probs = class_probabilities(clf, sentences(text), batch_size=8)
    expected = (probs @ np.array([0.0, 3.0, 2.0])).mean()
    got = quality_index(clf, [text, "", "   "], batch_size=2)
    assert got[0] == pytest.approx(expected) and got[1] == 0 and got[2] == 0


def test_perplexity_matches_the_models_own_loss(tok):
    model = load_base_model(TINY, len(tok), seed=0).eval()
    texts = ["The Senate voted on Tuesday.", "A much longer text about the economy, jobs, and the election " * 3]
    got = perplexities(model, tok, texts, max_tokens=64, batch_size=2)
    for t, p in zip(texts, got):
        ids = tok(t, return_tensors="pt")["input_ids"][:, :64]
        with torch.no_grad():
            loss = model(ids, labels=ids).loss
        assert p == pytest.approx(float(torch.exp(loss)), rel=1e-5)


def _scores(n=400, seeds=(0, 1, 2), p_right=0.6, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in seeds:
        labels = rng.choice(["left", "center", "right"], size=n, p=[(1 - p_right) / 2, (1 - p_right) / 2, p_right])
        probs = {f"p_{lab}": np.where(labels == lab, 0.5, 0.25) for lab in ("left", "center", "right")}  # argmax: label
        rows.append(
            pd.DataFrame(
                {
                    "study": "x",
                    "arm": "a",
                    "seed": s,
                    "generation": 0,
                    "article_id": np.arange(n).astype(str),
                    **probs,
                    "label": labels,
                    "tqi": rng.normal(2.5, 0.3, size=n),
                    "ppl": 10.0,
                    "ppl_ref": 20.0,
                    "null_p_left": np.nan,
                    "null_p_center": np.nan,
                    "null_p_right": np.nan,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)[list(TABLES["scores"].columns)]


def test_summary_shares_and_bootstrap_intervals():
    scores = _scores()
    per_seed, per_arm = summarize(scores, n_boot=400)
    assert len(per_seed) == 3 and len(per_arm) == 1
    for r in per_seed.itertuples():
        part = scores[scores["seed"] == r.seed]
        assert r.share_right == pytest.approx((part["label"] == "right").mean())
        assert r.share_right_lo < r.share_right < r.share_right_hi
        assert r.share_right_hi - r.share_right_lo == pytest.approx(2 * 1.96 * np.sqrt(0.24 / 400), rel=0.25)
        assert r.tqi_mean_lo < r.tqi_mean < r.tqi_mean_hi and r.ppl_mean == 10 and r.ppl_ref_mean == 20
    arm = per_arm.iloc[0]
    assert arm.n_seeds == 3 and arm.n_articles == 1200
    assert arm.share_right == pytest.approx((scores["label"] == "right").mean())
    assert arm.share_right_lo < arm.share_right < arm.share_right_hi


@pytest.mark.skipif(not PAPER.exists(), reason="needs ../shared/data/paper-results")
def test_import_paper_reproduces_argmax_shares_from_the_csvs():
    scores, notes = import_paper(PAPER)
    pd.testing.assert_frame_equal(import_paper(PAPER.parent)[0], scores)  # the folder that holds it works too
    per_seed, _ = summarize(scores, n_boot=20)
    raw = pd.read_csv(PAPER / "Synthetic_Bias_Performance.csv")
    direct = raw[["Left_Score", "Center_Score", "Right_Score"]].to_numpy().argmax(axis=1) == 2
    by_gen = pd.Series(direct).groupby(raw["Generation"]).mean()
    syn = per_seed[(per_seed["study"] == "paper") & (per_seed["arm"] == "synthetic")].set_index("generation")
    for file_gen, share in by_gen.items():
        assert syn.loc[file_gen - 1, "share_right"] == pytest.approx(share)  # file generation 1 = G0
    assert round(syn.loc[0, "share_right"], 3) == 0.544 and round(syn.loc[6, "share_right"], 3) == 0.675
    q = pd.read_csv(PAPER / "Synthetic_Generation_Quality.csv")
    assert syn.loc[3, "tqi_mean"] == pytest.approx(q.loc[q["Generation"] == 4, "GibberishLevel"].mean())
    assert set(per_seed["study"]) == {"paper", "paper_center_only"}
    assert {"synthetic", "preservation", "accumulation", "gpt2_base"} <= set(per_seed["arm"])
    assert any("tqi left empty" in n for n in notes)  # row-count mismatch in the center-only files


def test_classify_cli_on_a_csv(local_classifier, tmp_path):
    from typer.testing import CliRunner

    from biasamp.cli import app

    src = tmp_path / "arts.csv"
    pd.DataFrame({"article_id": ["a", "b"], "title": ["T1", "T2"], "text": ["Taxes fell.", "Unions rose."]}).to_csv(
        src, index=False
    )
    out = tmp_path / "out.parquet"
    res = CliRunner().invoke(
        app, ["classify", str(src), "--out", str(out), "--kind", "hf", "--model", str(local_classifier)]
    )
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    # the input's own columns are kept
    assert list(df.columns) == ["article_id", "title", "text", "p_left", "p_center", "p_right", "label"]
    assert list(df["article_id"]) == ["a", "b"]
    np.testing.assert_allclose(df[["p_left", "p_center", "p_right"]].sum(axis=1), 1.0)
    pd.DataFrame({"body": ["x"]}).to_csv(src, index=False)
    bad = CliRunner().invoke(
        app, ["classify", str(src), "--out", str(out), "--kind", "hf", "--model", str(local_classifier)]
    )
    assert bad.exit_code == 2 and "no 'text' column" in bad.output
    flags = CliRunner().invoke(app, ["classify", str(src), "--out", str(out), "--kind", "hf", "--labels", "LABEL_0"])
    assert flags.exit_code == 2 and flags.output.startswith("error: --labels:")
    flags = CliRunner().invoke(app, ["classify", str(src), "--out", str(out), "--kind", "nope"])
    assert flags.exit_code == 2 and flags.output.startswith("error: --kind:")


def test_a_study_from_before_the_read_setting_keeps_reading_title_and_body(tmp_path):
    """New studies read bodies (scoring.classifier.read: body); a study whose scores were made before
    the setting (their recorded settings name no reading) goes on reading title and body, on resume
    with the default and in every command that takes the folder; `--set` changes it for a rescore."""
    import json

    from biasamp import artifacts
    from biasamp.config import load_config, updated
    from biasamp.stages.summarize import SETTINGS_KEY, scoring_settings
    from biasamp.study import keep_recorded_reading, recorded_reading, study_config

    cfg = updated(load_config(Path("configs/smoke.yaml")), {"out_dir": str(tmp_path)})
    assert (
        cfg.scoring.classifier.read == "body"
        and json.loads(scoring_settings(cfg.scoring))["classifier_reads"] == "body"
    )
    old = updated(cfg, {"scoring.classifier.read": "title_body"})
    assert "classifier_reads" not in json.loads(scoring_settings(old.scoring))  # exactly the settings before
    artifacts.claim_output_dir(cfg, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["config"]["scoring"]["classifier"]["read"]  # as a manifest from before the setting
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert recorded_reading(tmp_path) is None  # no scores yet
    scores = pd.DataFrame(
        {"study": "smoke", "arm": "synthetic", "seed": 0, "generation": 0, "article_id": ["a"], "label": ["left"]}
    )
    scores = scores.assign(**{c: 0.0 for c in TABLES["scores"].columns if c not in scores})
    TABLES["scores"].write(
        scores, tmp_path, metadata={SETTINGS_KEY: scoring_settings(old.scoring)}, arm="synthetic", seed=0, generation=0
    )
    assert recorded_reading(tmp_path) == "title_body"
    lines = []
    assert (
        keep_recorded_reading(cfg, lines.append).scoring.classifier.read == "title_body"
        and "its scores read title_body" in lines[0]
    )
    assert study_config(tmp_path).scoring.classifier.read == "title_body"
    over = study_config(tmp_path, ["scoring.classifier.read=body"])
    assert over.scoring.classifier.read == "body"  # what `biasamp score OUT --set ...` rescores with
