"""The benchmark entry point: a benchmark runs end to end and records its row; docs/benchmarks.md's
performance table is what `python -m bench table` makes of the committed results table."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from bench.__main__ import COLUMNS, README, RESULTS, readme_with_table  # noqa: E402


def test_readme_performance_table_is_generated_from_the_results_table():
    results = pd.read_csv(RESULTS)
    assert list(results.columns) == COLUMNS and (results["repeats"] >= 3).all()
    readme = README.read_text()
    assert readme_with_table(readme, results) == readme, "run `python -m bench table`"


def test_stats_benchmark_prints_ours_baseline_and_speedup():
    """`python -m bench stats` through its entry point, on 1,000 of its 9,216 neurons (the statsmodels
    loop it compares against is what takes the time; the figure recorded is the full size's)."""
    code = (
        "import sys\n"
        "import bench.neuron_stats\n"
        "bench.neuron_stats.NEURONS = 1000\n"
        "sys.argv = ['bench', 'stats', '--repeats', '1', '--no-record']\n"
        "from bench.__main__ import main\n"
        "sys.exit(main())\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    ours = next(line for line in lines if line.strip().startswith("ours")).split()
    base = next(line for line in lines if line.strip().startswith("baseline")).split()
    speedup = next(line for line in lines if line.strip().startswith("speedup")).split()
    assert abs(float(speedup[1].rstrip("x")) / (float(base[-2]) / float(ours[-2])) - 1) < 0.01  # medians, 4 digits
    assert float(speedup[-1]) < 1e-8  # the p-values agree with statsmodels'


def test_gpu_bench_runs_here_on_tiny_models_without_the_cluster_stack():
    """`python -m bench gpu` as a GPU machine with only torch and transformers would run it: every
    architecture and workload once (tiny stand-ins without a GPU), nothing recorded, and not one module
    of Ray, DeepSpeed, vLLM or W&B imported on the way."""
    code = (
        "import sys\n"
        "sys.argv = ['bench', 'gpu', '--repeats', '1']\n"
        "from bench.__main__ import main\n"
        "rc = main()\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'deepspeed', 'vllm', 'wandb'})\n"
        "print('imported:', heavy)\n"
        "sys.exit(rc or bool(heavy))\n"
    )
    before = RESULTS.read_text()
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "imported: []" in res.stdout
    assert RESULTS.read_text() == before and "no GPU here, so tiny stand-in models ran; nothing recorded" in res.stdout
    for arch in ("gpt2", "smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "qwen2.5-1.5b"):
        for figure in ("generation", "fine-tuning", "neuron capture", "perplexity"):
            assert f"[gpu] {figure}, {arch} (2-layer x 64 stand-in" in res.stdout, (figure, arch)
    speedups = [line for line in res.stdout.splitlines() if line.strip().startswith("speedup")]
    assert len(speedups) == 5 * 5 and all("identical" in s for s in speedups[::5])
