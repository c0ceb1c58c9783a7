"""The leaning instrument against text degradation: the degradations, the degradation null that every
study scores beside each generation, and `biasamp classifier check`."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from biasamp.cli import app
from biasamp.config import LABELS, ClassifierConfig, ModelConfig, QualityConfig, ScoringConfig
from biasamp.corpus import read_source
from biasamp.instruments import invariance
from biasamp.instruments.degrade import DEGRADATIONS, degrade, degrade_to_profile, profile
from biasamp.stages.analyze import arm_contrasts
from biasamp.stages.score import load_instruments, score_articles
from biasamp.stages.summarize import summarize
from biasamp.text import sentences

TINY = ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe", tiny={"n_layer": 1, "n_embd": 32, "n_head": 2})


def test_degrade_to_profile_reproduces_length_and_repetition():
    body = read_source("bundled")["text"].iloc[0]
    assert profile(body)[1] < 0.05  # real prose hardly repeats its 4-grams
    for n, repeated in ((40, 0.0), (150, 0.5), (300, 0.85)):
        words, rep = profile(degrade_to_profile(body, n, repeated))
        assert words == n and rep == pytest.approx(repeated, abs=0.03), (n, repeated, rep)
    loop = " ".join([sentences(body)[0]] * 8)  # what a collapsing model writes
    n, repeated = profile(loop)
    assert repeated > 0.8 and profile(degrade_to_profile(body, n, repeated))[1] == pytest.approx(repeated, abs=0.03)


def test_each_degradation_changes_the_text_but_adds_no_words_of_its_own():
    body = read_source("bundled")["text"].iloc[1]
    for name in DEGRADATIONS:
        changed = degrade(body, name, seed=3)
        assert changed != body and changed == degrade(body, name, seed=3), name  # changed, and seeded
        if name != "a third gibberish":
            assert set(changed.split()) <= set(body.split()), name


class _Reads:
    """A leaning instrument (the protocol of biasamp.instruments.hf) that reads one property of the
    text as the probability of right; left and center share the rest."""

    labels = list(LABELS)

    def __init__(self, p_right):
        self.p_right = p_right

    def probabilities(self, texts, batch_size=0, owner=None):
        right = np.array([self.p_right(t) for t in texts], dtype=float)
        return np.column_stack([(1 - right) / 2, (1 - right) / 2, right])


def _short_reads_right(text):  # the confound: fewer distinct words, more right
    return 0.9 / (1 + np.exp((len(set(text.split())) - 90) / 15))


def _liberty_reads_right(text):  # a leaning: the more "liberty", the more right
    words = text.split()
    return min(0.9, 0.05 + 20 * words.count("liberty") / max(len(words), 1))


def _generations(real: pd.DataFrame, planted_leaning: bool) -> list[pd.DataFrame]:
    """Three generations of a collapse: shorter and loopier each time, written differently from the
    null's cut-and-loop (blocks followed by a repeated phrase, then one sentence looping); with
    `planted_leaning`, the later ones also say "liberty" more and more, at the same lengths."""
    gens = []
    for g in range(3):
        bodies = []
        for i, body in enumerate(real["text"]):
            words = body.split()
            if g == 0:
                text = " ".join(words[:260])
            elif g == 1:
                text = degrade(" ".join(words[:90]), "32-word blocks + phrase x3", seed=i)
            else:
                text = " ".join([sentences(body)[0]] * 5)
            if planted_leaning and g:
                w = text.split()
                w[:: 12 if g == 1 else 6] = ["liberty"] * len(w[:: 12 if g == 1 else 6])
                text = " ".join(w)
            bodies.append(text)
        gens.append(real.assign(text=bodies, study="s", arm="a", seed=0, generation=g))
    return gens


@pytest.fixture(scope="module")
def instruments():
    # the leaning instrument is replaced per test; quality and perplexity as cheap as the stage allows
    cfg = ScoringConfig(
        classifier=ClassifierConfig(kind="tiny_random"),
        quality=QualityConfig(kind="offline"),
        perplexity_max_tokens=8,
        bootstrap=200,
    )
    return load_instruments(cfg, TINY)


@pytest.mark.parametrize("reads, planted", [(_short_reads_right, False), (_liberty_reads_right, True)])
def test_the_degradation_null_catches_a_confounded_instrument_and_keeps_a_real_leaning(instruments, reads, planted):
    """Through the study's scoring, summaries and analysis. A confounded instrument reads collapse
    alone as a drift to right: the null drifts with it (measured and null agree within their CIs; the
    drift beyond the null is a small part of it). An instrument that reads a planted leaning sees a drift the null
    does not have."""
    real = read_source("bundled")
    inst = dataclasses.replace(instruments, leaning=_Reads(reads))
    scores = pd.concat([score_articles(inst, gen, real) for gen in _generations(real, planted)], ignore_index=True)
    summary = summarize(scores, 400)[0].set_index("generation")
    drift = summary.loc[2, "share_right"] - summary.loc[0, "share_right"]
    null_drift = summary.loc[2, "null_share_right"] - summary.loc[0, "null_share_right"]
    _, trends = arm_contrasts(scores.assign(arm="a"), n_boot=400)
    beyond = trends[trends["target"] == "lean_index_beyond_null"].iloc[0]
    measured = trends[trends["target"] == "lean_index"].iloc[0]
    assert measured["lo"] > 0.1, measured  # both read a strong drift to right
    if not planted:
        assert drift > 0.5 and abs(drift - null_drift) < 0.1, (drift, null_drift)
        for g in range(3):  # the null reads what the measured reads, generation by generation
            s = summary.loc[g]
            assert (
                s["null_share_right_lo"] <= s["share_right_hi"] and s["share_right_lo"] <= s["null_share_right_hi"]
            ), s
        # beyond the null: a tenth of the drift at most (article by article the null is close, not equal)
        assert abs(beyond["estimate"]) < 0.1 * measured["estimate"], (beyond["estimate"], measured["estimate"])
    else:
        assert abs(null_drift) < 0.05 and drift > 0.5, (drift, null_drift)
        assert beyond["lo"] > 0.1, beyond


def test_summaries_report_the_association_of_quality_with_leaning():
    rng = np.random.default_rng(0)
    tqi = rng.uniform(0, 3, 400)
    right = np.clip(0.8 - 0.2 * tqi + rng.normal(0, 0.05, 400), 0, 1)  # planted: low quality reads right
    scores = pd.DataFrame(
        {
            "study": "s",
            "arm": "a",
            "seed": 0,
            "generation": 0,
            "article_id": map(str, range(400)),
            "p_left": (1 - right) / 2,
            "p_center": (1 - right) / 2,
            "p_right": right,
            "tqi": tqi,
            "ppl": 1.0,
            "ppl_ref": 1.0,
        }
    )
    scores["label"] = np.array(LABELS)[scores[["p_left", "p_center", "p_right"]].to_numpy().argmax(1)]
    row = summarize(scores, 50)[0].iloc[0]
    assert row["tqi_rho_right_hi"] < -0.8 and row["tqi_rho_left_lo"] > 0.8
    null = scores.assign(tqi=rng.permutation(tqi))  # no association
    row = summarize(null, 50)[0].iloc[0]
    assert row["tqi_rho_right_lo"] < 0 < row["tqi_rho_right_hi"]
    assert np.isnan(row["null_share_right"])  # scores without a null: no null readings


def _labelled_file(tmp_path):
    path = tmp_path / "labelled.jsonl"
    read_source("bundled").to_json(path, orient="records", lines=True)
    return path


def test_check_passes_an_invariant_instrument_and_fails_a_confounded_one():
    articles = read_source("bundled")
    for reads, passes in ((lambda t: 0.3, True), (_short_reads_right, False)):
        table = invariance.shift_table(invariance.readings(_Reads(reads), articles), n_boot=100)
        assert set(table["condition"]) == {"intact", *DEGRADATIONS}
        assert set(table["reading"]) == {
            "share_left",
            "share_center",
            "share_right",
            "lean_index",
            "prev_left",
            "prev_center",
            "prev_right",
        }
        assert table["within_tolerance"].all() == passes
        if not passes:
            bad = table[(table["condition"] == "first sentence x8") & (table["reading"] == "share_right")].iloc[0]
            assert bad["shift"] > 0.5 and bad["shift_lo"] > 0.4


@pytest.mark.parametrize("kind", ["offline", "hf"])
def test_check_command_runs_on_the_shipped_and_a_local_hub_classifier(tmp_path, local_classifier, kind):
    out = tmp_path / "check.md"
    args = ["classifier", "check", "--articles", str(_labelled_file(tmp_path)), "--bootstrap", "50", "--out", str(out)]
    if kind == "hf":
        args += ["--kind", "hf", "--model", str(local_classifier)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "macro-F1 on the intact articles" in r.output and "largest shift" in r.output
    for name in DEGRADATIONS:
        assert f"| {name} |" in r.output
    rows = pd.read_parquet(out.with_suffix(".parquet"))
    assert len(rows) == (1 + len(DEGRADATIONS)) * 7 and r.output.strip().endswith(out.read_text().strip())


def test_check_names_a_file_without_labels(tmp_path):
    path = tmp_path / "x.jsonl"
    pd.DataFrame({"title": ["a"], "text": ["b c"]}).to_json(path, orient="records", lines=True)
    r = CliRunner().invoke(app, ["classifier", "check", "--articles", str(path)])
    assert r.exit_code == 2 and "x.jsonl" in r.output, r.output
