"""The leaning instrument against text degradation: the degradations, the degradation null that every
study scores beside each generation, and `biasamp classifier check`."""

import dataclasses
import json
from pathlib import Path

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


def _marker_reads(text):  # reads a marker word: right articles' reads right, left articles' left
    return 0.5 + 0.4 * ("zzright" in text) - 0.4 * ("zzleft" in text)


def test_check_finds_shifts_within_each_label_that_a_balanced_corpus_averages_away():
    """Each article's leaning sits at its end (a marker word): cut to its first 50 words, right articles
    read 0.6 less right in lean index and left ones 0.6 more, which over all articles is no shift."""
    articles = read_source("bundled")
    marker = articles["source_label"].map({"left": " zzleft", "center": "", "right": " zzright"})
    articles = articles.assign(text=articles["text"] + marker)
    table = invariance.shift_table(
        invariance.readings(_Reads(_marker_reads), articles), n_boot=100, labels=articles["source_label"]
    )
    cut = table[(table["condition"] == "first 50 words") & (table["reading"] == "lean_index")].set_index("articles")
    assert abs(cut.loc["all", "shift"]) < 0.01 and cut.loc["all", "within_tolerance"]
    assert cut.loc["right", "shift"] == pytest.approx(-0.6) and cut.loc["left", "shift"] == pytest.approx(0.6)
    assert abs(cut.loc["center", "shift"]) < 1e-9
    text = invariance.render(table, 1.0, {"left": 60, "center": 60, "right": 60}, "markers")
    assert (
        "Within the articles of each true label" in text and "largest shift within a label 1.000: NOT" in text
    )  # argmax flips


def test_check_on_a_study_corpus(tmp_path):
    """--study CONFIG: the articles its corpora draw (the smoke study's 12), per label too."""
    r = CliRunner().invoke(app, ["classifier", "check", "--study", "configs/smoke.yaml", "--bootstrap", "30"])
    assert r.exit_code == 0, r.output
    assert "12 articles (left 4, center 4, right 4)" in r.output and "| condition | left | center | right |" in r.output
    r = CliRunner().invoke(app, ["classifier", "check", "--study", str(tmp_path)])
    assert r.exit_code == 2 and "not a study folder (no manifest.json)" in r.output, r.output


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
    assert len(rows) == (1 + len(DEGRADATIONS)) * 7 * 4 and r.output.strip().endswith(out.read_text().strip())
    assert set(rows["articles"]) == {"all", *LABELS}  # all articles, then each label's


def test_check_names_a_file_without_labels(tmp_path):
    path = tmp_path / "x.jsonl"
    pd.DataFrame({"title": ["a"], "text": ["b c"]}).to_json(path, orient="records", lines=True)
    r = CliRunner().invoke(app, ["classifier", "check", "--articles", str(path)])
    assert r.exit_code == 2 and "x.jsonl" in r.output, r.output


ABP = Path(__file__).parents[1].parent / "shared" / "data" / "article-bias-prediction"


@pytest.fixture(scope="module")
def change_pairs(tmp_path_factory):
    """BEFORE: 300 real articles of outlets the shipped classifier trained on (100 per label), not read
    in its training; AFTER, planted: half the non-right articles replaced by right ones (+0.29 right
    share, the number drawn), null: each by another article of its own label; every AFTER body cut to
    40 words looped to 120, as collapse writes, under BEFORE's titles."""
    if not ABP.exists():
        pytest.skip("../shared/data/article-bias-prediction not present")
    from biasamp.instruments.leaning import LeaningModel

    every, seen = read_source(str(ABP)), set(LeaningModel.load("bundled").outlets)
    d = every[every["outlet"].isin(seen) & (every["text"].str.split().str.len() >= 120)]
    rng = np.random.default_rng(0)
    before = pd.concat([d[d["source_label"] == lab].sample(100, random_state=1) for lab in LABELS])
    rest = {lab: part for lab, part in d[~d["article_id"].isin(before["article_id"])].groupby("source_label")}
    flip = (before["source_label"].to_numpy() != "right") & (rng.random(len(before)) < 0.5)
    folder = tmp_path_factory.mktemp("change")
    before[["article_id", "title", "text", "source_label"]].to_json(
        folder / "before.jsonl", orient="records", lines=True
    )
    before[["article_id", "title", "text"]].to_csv(folder / "before_unlabelled.csv", index=False)
    # --data: outlets the classifier never saw, 300 a label (what the default reference draws its 60 a
    # label from), rather than reading all 26,962 articles again in every call.
    unseen = invariance.unseen_articles(every, seen, 300, seed=2)
    unseen.to_json(folder / "unseen_outlets.jsonl", orient="records", lines=True)
    for name, labels in (
        ("planted", np.where(flip, "right", before["source_label"])),
        ("null", before["source_label"]),
    ):
        bodies = [
            degrade_to_profile(rest[lab]["text"].iloc[rng.integers(len(rest[lab]))], 120, 2 / 3) for lab in labels
        ]
        after = pd.DataFrame({"article_id": before["article_id"], "title": before["title"], "text": bodies})
        after.to_parquet(folder / f"{name}.parquet")
    return folder, float(flip.mean())


@pytest.mark.parametrize("before", ["before.jsonl", "before_unlabelled.csv"])
def test_leaning_change_recovers_a_planted_change_under_collapse_and_reads_zero_on_a_null_pair(change_pairs, before):
    """Through the CLI: the calibrated change of right share covers the planted one where the raw
    reading shows a fraction of it, and covers 0 on the null pair; calibrated on BEFORE's labels, or
    without them on the shipped classifier's held-out check articles (the default reference)."""
    folder, truth = change_pairs
    found = {}
    for pair in ("planted", "null"):
        out = folder / f"{before}.{pair}.json"
        res = CliRunner().invoke(
            app,
            [
                "leaning-change",
                str(folder / before),
                str(folder / f"{pair}.parquet"),
                "--out",
                str(out),
                "--bootstrap",
                "400",
                "--per-label",
                "60",
                "--data",
                str(folder / "unseen_outlets.jsonl"),
            ],
        )
        assert res.exit_code == 0, res.output
        assert "share_right" in res.output and ("BEFORE's labels" in res.output) == (before == "before.jsonl")
        found[pair] = json.loads(out.read_text())["readings"]
    planted, null = found["planted"]["share_right"], found["null"]["share_right"]
    cal = planted["calibrated"]
    assert cal["lo"] <= truth <= cal["hi"], (cal, truth)
    # On BEFORE's own articles the change is seen; on other outlets' (the default reference, 60 per
    # label) the calibration is known less well and its CI is wider (docs/measuring.md).
    assert cal["lo"] > 0 or before == "before_unlabelled.csv", cal
    assert planted["raw"]["estimate"] < 0.6 * truth, planted["raw"]  # decay and the title shrink the raw reading
    assert null["calibrated"]["lo"] <= 0 <= null["calibrated"]["hi"], null
    assert set(found["null"]) == {"share_left", "share_center", "share_right", "lean_index"}


def test_leaning_change_refuses_after_articles_that_continue_nothing(change_pairs, tmp_path):
    folder, _ = change_pairs
    stray = pd.DataFrame({"article_id": ["nowhere"], "title": ["t"], "text": ["some words here"]})
    stray.to_json(tmp_path / "after.jsonl", orient="records", lines=True)
    res = CliRunner().invoke(
        app,
        [
            "leaning-change",
            str(folder / "before.jsonl"),
            str(tmp_path / "after.jsonl"),
            "--out",
            str(tmp_path / "j.json"),
        ],
    )
    assert res.exit_code != 0 and "1 article id(s) not in BEFORE (e.g. 'nowhere')" in res.output, res.output
    assert not (tmp_path / "j.json").exists()


def test_validate_states_the_smallest_change_the_study_can_see():
    """From the shipped classifier's power record: the quickstart (18 articles, 1 seed) cannot see the
    paper's +0.14 and says how many articles would; 1,000 per label can. The spread shrinks as
    1/sqrt(articles x seeds), and articles_needed is the smallest count that reaches the change."""
    from biasamp.instruments.prevalence import articles_needed, detectable_change

    quick = CliRunner().invoke(app, ["validate", "configs/quickstart.yaml", "--config-only"])
    assert quick.exit_code == 0, quick.output
    line = next(x for x in quick.output.splitlines() if x.startswith("power:"))
    assert "with 18 articles per generation and 1 seed" in line and "the paper's +0.14 needs" in line, line
    big = "corpora.main.per_label={left: 1000, center: 1000, right: 1000}"
    res = CliRunner().invoke(app, ["validate", "configs/quickstart.yaml", "--config-only", "--set", big])
    assert "with 3000 articles per generation" in res.output and "+0.14 is within reach" in res.output, res.output
    assert detectable_change(0.05, 300, 1200, 1) == pytest.approx(detectable_change(0.05, 300, 300, 1) / 2)
    assert detectable_change(0.05, 300, 300, 4) == pytest.approx(detectable_change(0.05, 300, 1200, 1))
    n = articles_needed(0.07, 300, 0.14, 1)
    assert detectable_change(0.07, 300, n, 1) <= 0.14 < detectable_change(0.07, 300, n - 1, 1)
    hub = CliRunner().invoke(app, ["validate", "configs/paper.yaml", "--config-only"])
    assert "power: unknown, no power record for classifier hf:" in hub.output, hub.output
