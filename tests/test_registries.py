"""An instrument and a mix are each one module and one registration: a toy measure and a toy mix,
defined in tests/toy_instrument.py and tests/toy_mix.py, flow through a real (tiny) study into the
scores, the summaries, the report and its W&B spec, with nothing else changed."""

import json

import numpy as np
import pandas as pd
import pytest

from biasamp import tables
from biasamp.config import ConfigError, from_dict
from biasamp.instruments.registry import MEASURES
from biasamp.stages.report import build, load, load_all, wandb_report
from biasamp.stages.trajectory import run_trajectory
from biasamp.study import prepare_study, summarize_study
from biasamp.tables import TABLES


@pytest.fixture
def toys():
    import toy_instrument
    import toy_mix  # noqa: F401  (a mix stays registered: nothing else uses its kind)

    from biasamp.instruments.registry import register_measure

    register_measure(toy_instrument.TOY)  # again, if an earlier test removed it
    yield toy_instrument
    MEASURES.pop("toy_e")
    tables.MEASURES.remove("toy_e")


def test_a_toy_instrument_and_a_toy_mix_flow_to_the_summaries_and_the_report(toys, study_dict, tmp_path):
    d = study_dict(arms={"toy": {"mix": "toy_most_right", "keep": 0.5}})
    cfg = from_dict(d)
    assert cfg.arms["toy"].mix.reads_scores and cfg.arms["toy"].mix.keep == 0.5
    with pytest.raises(ConfigError, match="arms.toy.mix.keep: Input should be a valid number"):
        from_dict({**d, "arms": {"toy": {"mix": "toy_most_right", "keep": "half"}}})
    prepare_study(cfg, log=lambda m: None)
    run_trajectory(cfg, "toy", 0, log=lambda m: None)
    out = cfg.output_dir

    scores = TABLES["scores"].read(out)
    articles = TABLES["articles"].read(out)
    expected = toys.share_of_e(toys.EReader(), list(articles.sort_values(["generation", "article_id"])["text"]), 1)
    assert np.allclose(scores.sort_values(["generation", "article_id"])["toy_e"], expected)
    assert expected.max() > 0  # the toy reads something
    g0 = scores[scores["generation"] == 0]
    training = TABLES["training"].read(out, generation=1)
    assert sorted(training["article_id"]) == sorted(g0.nlargest(3, "p_right")["article_id"])  # the toy mix chose
    settings = json.loads(
        tables.file_metadata(TABLES["scores"].file(out, arm="toy", seed=0, generation=0), "biasamp.scoring")
    )
    assert settings["toy_e"] == {"kind": "toy"}

    per_arm = summarize_study(cfg, log=lambda m: None)
    for col in ("toy_e_mean", "toy_e_mean_lo", "toy_e_mean_hi", "toy_e_rho_right", "tqi_mean"):
        assert col in per_arm and per_arm[col].notna().all(), col
    g = per_arm.set_index("generation")
    assert g.loc[0, "toy_e_mean"] == pytest.approx(g0["toy_e"].mean())

    page = build(load_all([out]), tmp_path / "report")
    report = wandb_report([load(out)], "e", "p")  # a registered measure is a W&B panel too
    assert "toy_e_mean" in {p.y[0] for b in report.blocks if hasattr(b, "panels") for p in b.panels if hasattr(p, "y")}
    html = page.read_text()
    assert "share of e (toy)" in html and "toy_e_mean" in html
    assert (tmp_path / "report" / "quality.png").exists()
    summary = pd.read_parquet(out / "summary_arms.parquet")
    assert list(summary.columns) == list(TABLES["summary_arms"].columns)


def test_without_the_toy_e_tables_are_as_before():
    assert "toy_e" not in TABLES["scores"].columns
    # the columns (and order) the scores table had when tqi was written into its declaration
    assert list(TABLES["scores"].columns) == [
        "study",
        "arm",
        "seed",
        "generation",
        "article_id",
        "p_left",
        "p_center",
        "p_right",
        "label",
        "tqi",
        "ppl",
        "ppl_ref",
        "null_p_left",
        "null_p_center",
        "null_p_right",
    ]
