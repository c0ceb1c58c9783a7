import numpy as np
import pandas as pd
from typer.testing import CliRunner

from biasamp.cli import app
from biasamp.simulate import fit_beta, simulate


def test_fit_beta_recovers_parameters_and_weights_shift_it():
    x = np.random.default_rng(0).beta(3, 2, size=50_000)
    a, b = fit_beta(x)
    assert abs(a - 3) < 0.1 and abs(b - 2) < 0.07
    w = x  # up-weighting large values moves the fitted mean up
    a2, b2 = fit_beta(x, w)
    assert a2 / (a2 + b2) > a / (a + b) + 0.02


def test_wmle_drifts_to_the_pretraining_mean_mle_stays():
    df = simulate(generations=10, n_pretrain=20_000, n_data=5_000, seed=1)
    pre = df[df["generation"] == -1]["mean"].iloc[0]
    w = df[df["method"] == "wmle"].set_index("generation")["mean"]
    m = df[df["method"] == "mle"].set_index("generation")["mean"]
    assert abs(pre - 0.6) < 0.01
    assert abs(w[9] - pre) < 0.01 and w[9] > w[0]  # drifts to ~0.6 ...
    wa = df[df["method"] == "wmle"].set_index("generation")["alpha"]
    assert wa[9] > 20 * wa[0]  # ... and collapses onto it
    assert (m[m.index >= 0] - 0.5).abs().max() < 0.03  # plain MLE stays at Beta(2,2)
    pd.testing.assert_frame_equal(df, simulate(generations=10, n_pretrain=20_000, n_data=5_000, seed=1))


def test_simulate_cli_writes_table_and_figures(tmp_path):
    res = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path), "--generations", "3"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(tmp_path / "simulation.parquet")) == 2 * (3 + 1)
    for m in ("wmle", "mle"):
        assert (tmp_path / f"simulation_{m}.png").read_bytes()[:4] == b"\x89PNG"
