import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from biasamp.cli import app
from biasamp.config import ArmConfig, CorpusConfig
from biasamp.corpus import read_source, sample_corpus
from biasamp.stages.mix import training_set

SHARED = Path(__file__).parents[1].parent / "shared" / "data" / "article-bias-prediction"


def _articles(n_per_label=10, years=(2010, 2020)):
    rows = []
    for label in ("left", "center", "right"):
        for i in range(n_per_label):
            year = years[0] + i % (years[1] - years[0] + 1)
            rows.append(
                {
                    "ID": f"{label}{i}",
                    "title": f"T {label} {i}",
                    "content_original": f"body {label} {i} " * (i + 1),
                    "bias_text": label,
                    "source": "outlet",
                    "date": f"{year}-05-01",
                }
            )
    return rows


def test_bundled_slice_is_balanced_and_attributed():
    df = read_source("bundled")
    assert df["source_label"].value_counts().to_dict() == {"left": 60, "center": 60, "right": 60}
    assert (df["text"].str.len() > 0).all()
    data = Path(__file__).parents[1] / "biasamp" / "data"
    assert (data / "LICENSE-article-bias-prediction").exists() and "Baly" in (data / "README.md").read_text()


def test_layouts_read_the_same(tmp_path):
    rows = _articles(3)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = tmp_path / "jsons"
    folder.mkdir()
    for r in rows:
        (folder / f"{r['ID']}.json").write_text(json.dumps(r))
    # The Webis-Bias-Flipper-18 layout: text/title/label columns.
    pd.DataFrame(
        {
            "title": [r["title"] for r in rows],
            "text": [r["content_original"] for r in rows],
            "label": [r["bias_text"] for r in rows],
        }
    ).to_csv(tmp_path / "webis.csv", index=False)
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hfds"))
    a = read_source(str(tmp_path / "a.jsonl"))
    b = read_source(str(folder))
    c = read_source(str(tmp_path / "webis.csv"))
    d = read_source(f"hf:{tmp_path / 'hfds'}")
    for other in (b, d):
        pd.testing.assert_frame_equal(
            a.sort_values("article_id").reset_index(drop=True), other.sort_values("article_id").reset_index(drop=True)
        )
    assert list(c["text"]) == list(a["text"]) and list(c["source_label"]) == list(a["source_label"])


def test_bad_label_and_missing_column_name_the_file(tmp_path):
    p = tmp_path / "x.csv"
    pd.DataFrame({"text": ["a"], "label": ["far-left"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"x.csv: label 'far-left'"):
        read_source(str(p))
    pd.DataFrame({"body_text": ["a"], "label": ["left"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match=r"x.csv: no text column"):
        read_source(str(p))
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        read_source(str(tmp_path / "nothere.jsonl"))


def test_stratified_year_filtered_seeded(tmp_path):
    df = read_source_rows(tmp_path, _articles(20))
    cfg = CorpusConfig(per_label={"left": 5, "center": 5, "right": 5}, years=(2012, 2018), seed=3)
    s1, s2 = sample_corpus(df, cfg), sample_corpus(df, cfg)
    pd.testing.assert_frame_equal(s1, s2)
    assert s1["source_label"].value_counts().to_dict() == {"left": 5, "center": 5, "right": 5}
    assert pd.to_datetime(s1["date"]).dt.year.between(2012, 2018).all()
    other = sample_corpus(df, cfg.model_copy(update={"seed": 4}))
    assert set(other["article_id"]) != set(s1["article_id"])
    with pytest.raises(ValueError, match=r"corpora.main.per_label.left: asks 99 articles, only 14 remain"):
        sample_corpus(df, cfg.model_copy(update={"per_label": {"left": 99}}), "main")


def read_source_rows(tmp_path, rows):
    p = tmp_path / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_source(str(p))


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data")
def test_prepare_cli_on_the_shared_corpus_center_only(tmp_path):
    out = tmp_path / "center.parquet"
    res = CliRunner().invoke(
        app,
        [
            "data",
            "prepare",
            str(SHARED),
            "--out",
            str(out),
            "--per-label",
            "30",
            "--center-only",
            "--years",
            "2012-2018",
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert len(df) == 30 and set(df["source_label"]) == {"center"}
    assert pd.to_datetime(df["date"], format="mixed").dt.year.between(2012, 2018).all()


def test_prepare_cli_error_is_one_line(tmp_path):
    res = CliRunner().invoke(
        app, ["data", "prepare", "bundled", "--out", str(tmp_path / "x.parquet"), "--per-label", "1000"]
    )
    assert res.exit_code == 2 and "per_label.left: asks 1000 articles, only 60 remain" in res.output
    assert not (tmp_path / "x.parquet").exists()


# --- each arm's training mix -------------------------------------------------------------


def _gens(n_real=20, n_gens=3):
    real = pd.DataFrame(
        {"article_id": [f"a{i}" for i in range(n_real)], "title": "t", "text": "real", "source_label": "left"}
    )
    syn = [real.assign(text=f"D{g}", generation=g) for g in range(n_gens)]
    return real, syn


def test_g0_trains_on_real_for_every_arm():
    real, syn = _gens()
    for mix in ("replace", "preserve", "accumulate", "accumulate_subsample"):
        assert (training_set(ArmConfig(mix=mix), 0, real, [], 0)["text"] == "real").all()


def test_replace_uses_latest_generation_only():
    real, syn = _gens()
    ts = training_set(ArmConfig(mix="replace"), 3, real, syn, 0)
    assert len(ts) == 20 and (ts["text"] == "D2").all()


def test_preserve_adds_fraction_of_real_resampled_each_generation():
    real, syn = _gens(n_real=40)
    arm = ArmConfig(mix="preserve", real_fraction=0.1)
    a = training_set(arm, 2, real, syn[:2], seed=0)
    b = training_set(arm, 3, real, syn, seed=0)
    assert len(a) == 44 and (a["text"] == "D1").sum() == 40 and (a["text"] == "real").sum() == 4
    assert a["source"].value_counts().to_dict() == {"G1": 40, "real": 4}
    real_a = set(a.loc[a["text"] == "real", "article_id"])
    real_b = set(b.loc[b["text"] == "real", "article_id"])
    assert real_a != real_b  # redrawn per generation
    pd.testing.assert_frame_equal(a, training_set(arm, 2, real, syn[:2], seed=0))  # but seeded


def test_accumulate_keeps_everything_and_subsample_keeps_size():
    real, syn = _gens()
    acc = training_set(ArmConfig(mix="accumulate"), 3, real, syn, 0)
    assert len(acc) == 80 and acc["text"].value_counts().to_dict() == {"real": 20, "D0": 20, "D1": 20, "D2": 20}
    assert (acc["source"] == acc["text"].str.replace("D", "G")).all()  # source: real or the generation that wrote it
    sub = training_set(ArmConfig(mix="accumulate_subsample"), 3, real, syn, 0)
    assert len(sub) == 20 and set(sub["text"]) <= {"real", "D0", "D1", "D2"} and sub["text"].nunique() > 1


def _skewed(n=300, right=0.8, seed=0):
    """A real corpus with equal label shares, and a D_{g-1} the classifier calls `right`-heavy."""
    rng = np.random.default_rng(seed)
    labels = np.array(["left", "center", "right"])
    real = pd.DataFrame(
        {
            "article_id": [f"a{i}" for i in range(n)],
            "title": "t",
            "text": "real",
            "source_label": np.repeat(labels, n // 3),
        }
    )
    syn = real.assign(text="D0", generation=0)
    drawn = rng.choice(labels, n, p=[(1 - right) / 2, (1 - right) / 2, right])
    scores = pd.DataFrame({"article_id": syn["article_id"], "label": drawn})
    return real, [syn], scores


def test_curate_moves_a_skewed_generation_to_the_real_label_shares():
    real, syn, scores = _skewed()
    before = scores["label"].value_counts(normalize=True)
    assert before["right"] > 0.7
    ts = training_set(ArmConfig(mix="curate"), 1, real, syn, seed=0, previous_scores=scores)
    assert len(ts) == len(syn[0]) and (ts["source"] == "G0").all()
    shares = ts.merge(scores, on="article_id")["label"].value_counts(normalize=True)
    for lab in ("left", "center", "right"):
        assert shares[lab] == pytest.approx(1 / 3, abs=0.01), shares
    assert ts["article_id"].duplicated().any()  # the scarce labels were upsampled
    # a label the classifier never gave: its share goes to the others, nothing breaks
    no_center = scores.assign(label=scores["label"].replace("center", "left"))
    ts2 = training_set(ArmConfig(mix="curate"), 1, real, syn, 0, no_center)
    assert len(ts2) == len(syn[0]) and set(ts2.merge(no_center, on="article_id")["label"]) == {"left", "right"}


def test_preserve_balanced_draws_the_real_articles_that_counter_the_drift():
    real, syn, scores = _skewed()
    arm = ArmConfig(mix={"kind": "preserve_balanced", "real_fraction": 0.2})
    ts = training_set(arm, 1, real, syn, seed=0, previous_scores=scores)
    kept = ts[ts["source"] == "real"].merge(real, on="article_id")
    assert len(kept) == 60 and (ts["source"] == "G0").sum() == 300
    assert (kept["source_label"] == "right").sum() == 0  # D_0 already has too many right articles
    plain = training_set(ArmConfig(mix="preserve", real_fraction=0.2), 1, real, syn, 0)

    def mixed(t):
        return pd.concat(
            [
                t.loc[t.source == "G0"].merge(scores, on="article_id")["label"],
                t.loc[t.source == "real"].merge(real, on="article_id")["source_label"],
            ]
        )

    assert mixed(ts).value_counts(normalize=True)["right"] < mixed(plain).value_counts(normalize=True)["right"] - 0.05


def test_every_config_mix_has_one_function():
    from biasamp.config import MIX_KINDS
    from biasamp.stages.mix import MIXES

    assert sorted(MIXES) == sorted(MIX_KINDS)
