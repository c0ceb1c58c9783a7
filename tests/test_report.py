"""`biasamp report`: figures from the tables, the page as a browser shows it (the W&B Report:
tests/test_wandb.py)."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import biasamp.instruments  # noqa: F401  (registers tqi: the tables' measure columns; alone, this module would not)
from biasamp.cli import app
from biasamp.config import LABELS
from biasamp.tables import TABLES

ARMS = ("synthetic", "preservation", "curation")
PAPER = Path(__file__).parents[2] / "shared" / "data" / "paper-results" / "Bias_Performance_and_Generation_Quality"


def _study(out: Path, gens=4, seeds=(0, 1)) -> Path:
    """The tables a study and `biasamp analyze` write, with made-up values (the report reads only tables)."""
    rng = np.random.default_rng(0)
    rows = []
    for arm in ARMS:
        for g in range(gens):
            r = {"study": "s", "arm": arm, "generation": g, "n_seeds": len(seeds), "n_articles": 100}
            for lab, v in zip(LABELS, rng.dirichlet([3, 3, 3])):
                r.update({f"share_{lab}": v, f"share_{lab}_lo": v - 0.05, f"share_{lab}_hi": v + 0.05})
                r.update({f"prev_{lab}": v, f"prev_{lab}_lo": v - 0.08, f"prev_{lab}_hi": v + 0.08})
                c = f"share_{lab}_calibrated"
                r.update({c: v * 1.1, f"{c}_lo": v * 1.1 - 0.1, f"{c}_hi": v * 1.1 + 0.1})
                r.update(
                    {
                        f"null_share_{lab}": v * 0.9,
                        f"null_share_{lab}_lo": v * 0.9 - 0.05,
                        f"null_share_{lab}_hi": v * 0.9 + 0.05,
                    }
                )
                r.update(
                    {
                        f"tqi_rho_{lab}": -0.05 * g,
                        f"tqi_rho_{lab}_lo": -0.05 * g - 0.1,
                        f"tqi_rho_{lab}_hi": -0.05 * g + 0.1,
                    }
                )
            for col, v in (
                ("lean_index", 0.02 * g),
                ("null_lean_index", 0.01 * g),
                ("lean_index_calibrated", 0.05 * g),
            ):
                r.update({col: v, f"{col}_lo": v - 0.03, f"{col}_hi": v + 0.03})
            r.update(
                tqi_mean=2.0 - 0.1 * g,
                tqi_mean_lo=1.9 - 0.1 * g,
                tqi_mean_hi=2.1 - 0.1 * g,
                ppl_mean=30.0 + g,
                ppl_ref_mean=40.0 + g,
            )
            rows.append(r)
    TABLES["summary_arms"].write(pd.DataFrame(rows), out)
    for arm in ARMS:
        for s in seeds:
            for g in range(gens):
                steps = pd.DataFrame({"step": range(1, 6), "loss": np.linspace(3, 2, 5) - 0.1 * g})
                steps = steps.assign(
                    study="s",
                    arm=arm,
                    seed=s,
                    generation=g,
                    train_loss=2.5 - 0.1 * g,
                    train_articles=100,
                    train_tokens=1e4,
                    train_seconds=1.0,
                    capture_seconds=0.5,
                    generate_seconds=2.0,
                    score_seconds=1.0,
                    epochs=1.0,
                    batch_size=8,
                    lr=5e-5,
                    weight_decay=0.01,
                    max_length=512,
                    init="previous",
                    backend="plain",
                )
                TABLES["train_metrics"].write(steps, out, arm=arm, seed=s, generation=g)
    contrasts = [
        {
            "study": "s",
            "arm": arm,
            "baseline": "synthetic",
            "generation": g,
            "target": t,
            "estimate": 0.01 * g,
            "lo": -0.02,
            "hi": 0.02 + 0.01 * g,
            "se": 0.01,
            "p": 0.5,
            "arm_value": 0.3,
            "baseline_value": 0.3,
            "n_seeds": 2,
            "n_seeds_baseline": 2,
            "seed_variation_in_ci": True,
        }
        for arm in ARMS[1:]
        for g in range(gens)
        for t in ("share_right", "tqi_mean", "ppl_mean")
    ]
    TABLES["arm_contrasts"].write(pd.DataFrame(contrasts), out)
    tests = pd.DataFrame(
        [
            {
                "target": t,
                "kind": "weight",
                "stat": "l2",
                "layer": layer,
                "neuron": n,
                "beta": 0.1,
                "se": 0.1,
                "t": 1.0,
                "p": 0.3,
                "q": 0.9,
                "r": 0.1,
                "n_obs": 12,
                "n_trajectories": 6,
                "significant": bool(n < layer + 1),
            }
            for t in ("share_right", "tqi_mean")
            for layer in range(3)
            for n in range(8)
        ]
    )
    TABLES["neuron_tests"].write(tests, out)
    null = {
        t: {"significant": 6, "null_expected_significant": 0.4, "null_max_significant": 2}
        for t in ("share_right", "tqi_mean")
    }
    (out / "neuron_tests_summary.json").write_text(json.dumps({"within": {"weight/l2": {"null": null}}}))
    return out


def test_report_draws_every_figure_naming_every_arm(tmp_path):
    res = CliRunner().invoke(app, ["report", str(_study(tmp_path / "study")), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r" / "index.html").read_text()
    figures = [
        f
        for f in ("leaning_shares", "leaning_calibrated", "quality", "quality_vs_leaning", "training_loss")
        + ("arm_contrasts", "neurons")
    ]
    for f in figures:
        assert f'src="{f}.png"' in page and (tmp_path / "r" / f"{f}.svg").exists()
    leaning_svg = (tmp_path / "r" / "leaning_shares.svg").read_text()
    for arm in ARMS:
        assert arm in leaning_svg
    assert "expected from degradation alone" in leaning_svg and "lean index" in leaning_svg
    calibrated_svg = (tmp_path / "r" / "leaning_calibrated.svg").read_text()
    assert all(arm in calibrated_svg for arm in ARMS) and "thin: the raw reading" in calibrated_svg
    assert not (tmp_path / "r" / "dose_response.png").exists()  # no sweep, no dose-response figure


def test_report_states_the_study_power(tmp_path):
    """A study folder with its manifest: the page says what change of right share the study can see,
    as `biasamp validate` does (from the config's articles per generation and seeds)."""
    from biasamp import artifacts
    from biasamp.config import load_config, updated

    study = _study(tmp_path / "study")
    cfg = updated(load_config(Path("configs/quickstart.yaml")), {"out_dir": str(study)})
    artifacts.claim_output_dir(cfg, study)
    res = CliRunner().invoke(app, ["report", str(study), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r" / "index.html").read_text()
    assert "power: with 18 articles per generation and 1 seed" in page and "+0.14 needs" in page


def test_two_folders_of_one_study_name_are_told_apart(tmp_path):
    """runs/a/study and runs/b/study, both study 's' with different configs: the page labels each by
    as much of its path as tells them apart, a warning says so, and a W&B Report (whose run sets
    filter by study name, the W&B group) is refused in one line."""
    from biasamp import artifacts
    from biasamp.config import load_config, updated

    folders = [_study(tmp_path / "runs" / side / "study") for side in ("a", "b")]
    for folder, lr in zip(folders, (1e-3, 2e-3)):
        cfg = load_config(Path("configs/quickstart.yaml"), ["study=s", f"train.lr={lr}"])
        artifacts.claim_output_dir(updated(cfg, {"out_dir": str(folder)}), folder)
    res = CliRunner().invoke(app, ["report", *map(str, folders), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "warning: a/study and b/study are both study 's' (2 different configs): told apart by folder" in res.output
    svg = (tmp_path / "r" / "leaning_shares.svg").read_text()
    assert "a/study: synthetic" in svg and "b/study: synthetic" in svg
    refused = CliRunner().invoke(app, ["report", *map(str, folders), "--out", str(tmp_path / "w"), "--wandb", "e/p"])
    assert refused.exit_code == 2 and "their runs share one W&B group" in refused.output
    assert not (tmp_path / "w").exists()


def test_report_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no summary_arms.parquet" in res.output and "Traceback" not in res.output


@pytest.mark.skipif(not PAPER.exists(), reason="../shared/data/paper-results not present")
def test_report_puts_the_authors_curves_on_our_axes(tmp_path):
    imported = tmp_path / "paper"
    assert (
        CliRunner().invoke(app, ["import-paper", str(PAPER), "--out", str(imported), "--bootstrap", "20"]).exit_code
        == 0
    )
    res = CliRunner().invoke(
        app, ["report", str(_study(tmp_path / "study")), "--out", str(tmp_path / "r"), "--paper", str(imported)]
    )
    assert res.exit_code == 0, res.output
    svg = (tmp_path / "r" / "leaning_shares.svg").read_text()
    assert "authors: synthetic" in svg and "authors: preservation" in svg
    alone = CliRunner().invoke(app, ["report", str(imported), "--out", str(tmp_path / "paper_report")])
    assert alone.exit_code == 0, alone.output  # the imported numbers on their own: the paper's Figure 2


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_browser() is None, reason="no headless browser here (CI installs Debian's chromium)")
def test_the_page_shows_every_figure_in_a_real_browser(tmp_path):
    CliRunner().invoke(app, ["report", str(_study(tmp_path / "study")), "--out", str(tmp_path / "r")])
    page = tmp_path / "r" / "index.html"
    probe = tmp_path / "r" / "probe.html"  # the same page, reporting each image's natural size once loaded
    probe.write_text(
        page.read_text().replace(
            "</body>",
            """<script>
window.addEventListener('load', () => document.body.setAttribute('data-images',
  JSON.stringify([...document.images].map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight]))));
</script></body>""",
        )
    )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    dom = subprocess.run(
        [_browser(), *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    marker = 'data-images="'
    assert marker in dom.stdout, dom.stderr[-2000:]
    raw = dom.stdout.split(marker, 1)[1].split('"', 1)[0].replace("&quot;", '"')
    images = json.loads(raw)
    assert len(images) >= 5 and all(w > 0 and h > 0 for _, w, h in images), images
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_browser(), *flags, f"--screenshot={shot}", "--window-size=1300,1600", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.05, "the screenshot is blank"
