"""`biasamp report`: a study's tables as figures and one self-contained HTML page.

Reads only the tables (biasamp.tables) and the manifest, never a model: summary_arms (leaning
shares, quality, perplexity with CIs), train_metrics, arm_contrasts, neuron_tests and
neuron_tests_summary.json. Several study folders share the axes (colour = arm, line style =
folder); `--paper` adds the authors' imported numbers, dashed. Each figure is a PNG (for the page)
and an SVG (for papers).
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from biasamp import artifacts  # noqa: E402
from biasamp.config import LABELS, SweepConfig, from_dict  # noqa: E402
from biasamp.files import atomic  # noqa: E402
from biasamp.instruments.leaning import power_statement  # noqa: E402
from biasamp.instruments.registry import MEASURES  # noqa: E402
from biasamp.tables import TABLES  # noqa: E402

plt.rcParams["svg.fonttype"] = "none"  # SVG text stays text: editable in a paper, searchable
# Okabe-Ito: distinguishable with every common colour-vision deficiency.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
STYLES = ["-", "--", ":", "-."]
SHARE_TITLES = {"left": "left-leaning", "center": "center", "right": "right-leaning"}


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    table = TABLES[name]
    return table.read(folder) if table.where(folder).exists() else None


def load(folder: Path) -> dict:
    """One study folder (or an `import-paper` folder): its tables, manifest and neuron summary."""
    folder = Path(folder)
    if not (folder / "summary_arms.parquet").exists():
        raise FileNotFoundError(f"{folder}: no summary_arms.parquet (run the study, or `biasamp score`, first)")
    nsum = folder / "neuron_tests_summary.json"
    return {
        "folder": folder,
        "label": folder.name,
        "summary_arms": _read(folder, "summary_arms"),
        "summary": _read(folder, "summary"),
        "train_metrics": _read(folder, "train_metrics"),
        "contrasts": _read(folder, "arm_contrasts"),
        "trends": _read(folder, "arm_trends"),
        "neuron_tests": _read(folder, "neuron_tests"),
        "neuron_summary": json.loads(nsum.read_text()) if nsum.exists() else {},
        "manifest": artifacts.read_manifest(folder),
    }


def load_all(folders: list[Path]) -> list[dict]:
    """The study folders of one report, each labelled by as much of its path as tells it apart
    (runs/a/out and runs/b/out: a/out and b/out)."""
    studies = [load(f) for f in folders]
    if len(studies) < 2:  # one study keeps its folder's name
        return studies
    parts = [Path(s["folder"]).resolve().parts for s in studies]
    depth = 1
    while len({p[-depth:] for p in parts}) < len(parts) and depth < max(map(len, parts)):
        depth += 1
    for s, p in zip(studies, parts):
        s["label"] = "/".join(p[-depth:])
    return studies


def same_names(studies: list[dict]) -> list[str]:
    """One line per study name that two of these folders share: W&B groups runs by study name."""
    by_name: dict[str, list[dict]] = {}
    for s in studies:
        if s["manifest"]:
            by_name.setdefault(s["manifest"]["study"], []).append(s)
    lines = []
    for name, group in by_name.items():
        if len(group) > 1:
            hashes = {s["manifest"]["science_hash"] for s in group}
            how = "the same config" if len(hashes) == 1 else f"{len(hashes)} different configs"
            lines.append(f"{' and '.join(s['label'] for s in group)} are both study '{name}' ({how})")
    return lines


def unfinished(study: dict) -> list[str]:
    """The config's (arm, seed) trajectories whose last generation is not in the summary table."""
    config = _config(study)
    if not config.get("arms") or study["summary"] is None:
        return []
    last = config["generations"] - 1
    done = study["summary"][study["summary"]["generation"] == last]
    done = set(zip(done["arm"], done["seed"]))
    return [f"{arm}/seed{seed}" for arm in config["arms"] for seed in config["seeds"] if (arm, seed) not in done]


def _colours(studies: list[dict], paper: dict | None) -> dict[str, str]:
    """A colour per arm: those summarized, then those only configured (an arm whose every trajectory
    failed after training is in train_metrics, not in the summaries)."""
    arms = []
    for s in studies + ([paper] if paper else []):
        arms += [a for a in s["summary_arms"]["arm"].unique() if a not in arms]
    for s in studies:
        arms += [a for a in _config(s).get("arms", {}) if a not in arms]
    return {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(arms)}


def _series(studies: list[dict], paper: dict | None):
    """(label, colour, line style, rows of one study/arm) for every curve, ours then the authors'."""
    colour = _colours(studies, paper)
    several = len(studies) > 1
    k = 0  # one line style per (folder, study): an import-paper folder holds two studies
    for s in studies:
        for j, (study, spart) in enumerate(s["summary_arms"].groupby("study", sort=True)):
            for arm, part in spart.groupby("arm", sort=True):
                label = arm if not several and j == 0 else f"{s['label'] if several else study}: {arm}"
                if arm == "gpt2_base":
                    label += " (before fine-tuning)"
                yield label, colour[arm], STYLES[k % len(STYLES)], part.sort_values("generation")
            k += 1
    if paper:
        for (study, arm), part in paper["summary_arms"].groupby(["study", "arm"], sort=True):
            part = part[part["generation"] >= 0]
            if len(part) > 1 and study == "paper":
                yield f"authors: {arm}", colour[arm], (0, (5, 2)), part.sort_values("generation")


def _save(fig, out: Path, name: str) -> str:
    for ext in ("png", "svg"):
        with atomic(out / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, dpi=110, format=ext, bbox_inches="tight")
    plt.close(fig)
    return name


def _legend_below(fig, ax) -> None:
    """One legend under the panels, where it hides no curve."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=9, frameon=False)


def _generations(ax) -> None:
    ax.set_xlabel("generation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _band(ax, part, col, colour, style, label, percent=False):
    k = 100 if percent else 1
    ax.plot(part["generation"], part[col] * k, ls=style, color=colour, label=label, lw=1.8, marker="o", ms=3)
    if f"{col}_lo" in part and part[f"{col}_lo"].notna().any():
        ax.fill_between(
            part["generation"], part[f"{col}_lo"] * k, part[f"{col}_hi"] * k, color=colour, alpha=0.13, lw=0
        )


NULL_STYLE = (0, (1, 1.5))  # dotted: what degradation alone would read


def _leaning_panels(studies, paper, lean_title: str, draw):
    """The four leaning panels (each label's share, the lean index): draw(ax, part, col, k, colour,
    style, label) per series and panel; returns the figure and its axes."""
    panels = [(f"share_{lab}", f"share of {SHARE_TITLES[lab]} articles", 100) for lab in LABELS]
    panels.append(("lean_index", lean_title, 1))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), layout="constrained")
    for ax, (col, title, k) in zip(axes, panels):
        for label, colour, style, part in _series(studies, paper):
            draw(ax, part, col, k, colour, style, label)
        ax.set_title(title, fontsize=10)
        _generations(ax)
    for ax in axes[1:3]:
        ax.sharey(axes[0])
    axes[0].set_ylabel("% of the generation's articles (95% CI)")
    axes[3].axhline(0, color="0.3", lw=0.8)
    return fig, axes


def fig_leaning(studies, paper, out: Path) -> str:
    """Argmax shares and the lean index, each beside its degradation null (dotted): the same reading
    of the real articles cut and looped to each generation's length and repetition. A drift the
    dotted line shares is decay read as leaning, not leaning.

    Not the confusion-corrected prev_*: on generated text the offline classifier's outputs can lie
    outside what its calibration spans, and the correction then pins a share at 0 or 100%."""

    def draw(ax, part, col, k, colour, style, label):
        if col in part and part[col].notna().any():
            _band(ax, part, col, colour, style, label, percent=k == 100)
        if f"null_{col}" in part and part[f"null_{col}"].notna().any():
            ax.plot(part["generation"], part[f"null_{col}"] * k, ls=NULL_STYLE, color=colour, lw=1.6)

    fig, axes = _leaning_panels(studies, paper, "lean index: mean p(right) - mean p(left)", draw)
    if _measured(studies, paper, "null_share_right"):
        axes[0].plot([], [], ls=NULL_STYLE, color="0.3", label="dotted: expected from degradation alone")
    _legend_below(fig, axes[0])
    fig.suptitle(
        "Leaning of what each generation writes (classifier argmax shares, lean index), "
        "beside what its degradation alone would read"
    )
    return _save(fig, out, "leaning_shares")


def fig_leaning_calibrated(studies, paper, out: Path) -> str | None:
    """The same readings in label units: each generation's label shares calibrated on the real articles
    it continues, degraded as it is (prevalence.calibrated_readings), with the raw reading thin beside
    it. Where decay shrinks the raw reading's response to a change of leaning, the calibrated one
    does not. None where no table holds calibrated readings (imported numbers, older summaries)."""
    if not _measured(studies, paper, "share_right_calibrated"):
        return None

    def draw(ax, part, col, k, colour, style, label):
        if f"{col}_calibrated" in part and part[f"{col}_calibrated"].notna().any():
            _band(ax, part, f"{col}_calibrated", colour, style, label, percent=k == 100)
            ax.plot(part["generation"], part[col] * k, ls=style, color=colour, lw=0.8, alpha=0.6)

    fig, axes = _leaning_panels(studies, paper, "lean index: share right - share left", draw)
    axes[0].plot([], [], color="0.3", lw=0.8, alpha=0.6, label="thin: the raw reading (argmax share, lean index)")
    _legend_below(fig, axes[0])
    fig.suptitle("Leaning in label units: calibrated on real articles degraded as each generation's text is")
    return _save(fig, out, "leaning_calibrated")


def _measured(studies, paper, col: str) -> bool:
    return any(col in part and part[col].notna().any() for *_, part in _series(studies, paper))


def fig_quality_association(studies, paper, out: Path) -> str | None:
    """Within each generation, Spearman's rho of each measure (the quality index, ...) with each
    leaning probability: the confound's cross-section, one row per measure. An instrument that reads
    degraded text as a label shows a negative quality rho for it (low quality, high probability)."""
    rows = [m for m in MEASURES if _measured(studies, paper, f"{m}_rho_right")]
    if not rows:
        return None
    fig, axes = plt.subplots(
        len(rows), 3, figsize=(14, 4.0 * len(rows)), sharey=True, layout="constrained", squeeze=False
    )
    for m, row in zip(rows, axes):
        for ax, lab in zip(row, LABELS):
            for label, colour, style, part in _series(studies, paper):
                if part[f"{m}_rho_{lab}"].notna().any():
                    _band(ax, part, f"{m}_rho_{lab}", colour, style, label)
            ax.axhline(0, color="0.3", lw=0.8)
            ax.set_title(f"{MEASURES[m].title.split(' (')[0]} vs p({lab})", fontsize=10)
            _generations(ax)
        row[0].set_ylabel("Spearman rho within the generation (95% CI)")
    _legend_below(fig, axes[0][0])
    fig.suptitle(
        "Does the leaning reading move with text quality inside a generation?"
        if len(rows) == 1
        else "Does the leaning reading move with text quality, or another measure, inside a generation?"
    )
    return _save(fig, out, "quality_vs_leaning")


def fig_quality(studies, paper, out: Path) -> str:
    """Each measure's mean (95% CI), then perplexity under the generation's own and the base model."""
    measures = [m for m in MEASURES if _measured(studies, paper, f"{m}_mean")] or list(MEASURES)[:1]
    fig, axes = plt.subplots(1, len(measures) + 2, figsize=(14 + 4.5 * (len(measures) - 1), 4.2), layout="constrained")
    for label, colour, style, part in _series(studies, paper):
        for ax, m in zip(axes, measures):
            if f"{m}_mean" in part:
                _band(ax, part, f"{m}_mean", colour, style, label)
        for ax, col in zip(axes[len(measures) :], ("ppl_mean", "ppl_ref_mean")):
            if part[col].notna().any():
                ax.plot(part["generation"], part[col], ls=style, color=colour, label=label, lw=1.8, marker="o", ms=3)
    titles = [f"{MEASURES[m].title}; 95% CI" for m in measures] + [
        "perplexity under the generation's own model",
        "perplexity under the base model (fixed)",
    ]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        _generations(ax)
    for ax in axes[len(measures) :]:
        if ax.lines:
            values = [v for line in ax.lines for v in line.get_ydata() if v > 0]
            if max(values) / min(values) > 10:  # log only where the range spans more than a decade
                ax.set_yscale("log")
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"))
        else:
            ax.text(
                0.5, 0.5, "not measured in these tables", ha="center", va="center", transform=ax.transAxes, color="0.4"
            )
    axes[0].set_ylabel("mean over articles")
    axes[len(measures)].set_ylabel("mean perplexity")
    _legend_below(fig, axes[0])
    fig.suptitle("Quality of what each generation writes")
    return _save(fig, out, "quality")


def _stacked(studies, key: str) -> pd.DataFrame | None:
    """One table of every study folder that has it, with a `folder` column (None: no folder has it)."""
    parts = [s[key].assign(folder=s["label"]) for s in studies if s[key] is not None]
    return pd.concat(parts) if parts else None


def fig_training(studies, out: Path) -> str | None:
    tm = _stacked(studies, "train_metrics")
    if tm is None:
        return None
    colour = _colours(studies, None)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
    per_gen = tm.groupby(["folder", "arm", "seed", "generation"], as_index=False)["train_loss"].first()
    for k, (folder, fpart) in enumerate(per_gen.groupby("folder", sort=True)):
        for arm, part in fpart.groupby("arm", sort=True):
            mean = part.groupby("generation")["train_loss"].mean()
            label = arm if len(studies) == 1 else f"{folder}: {arm}"
            axes[0].plot(
                mean.index, mean.values, ls=STYLES[k % len(STYLES)], color=colour[arm], marker="o", ms=3, label=label
            )
    first = tm[(tm["seed"] == tm["seed"].min()) & (tm["folder"] == tm["folder"].iloc[0])]
    for arm, part in first.sort_values(["generation", "step"]).groupby("arm", sort=True):
        axes[1].plot(range(len(part)), part["loss"], color=colour[arm], lw=1, label=arm)
    axes[0].set_title("mean training loss of each generation (over seeds)", fontsize=10)
    _generations(axes[0])
    axes[1].set_title(f"loss per optimizer step, seed {tm['seed'].min()}, generations one after another", fontsize=10)
    axes[1].set_xlabel("optimizer step (all generations)")
    for ax in axes:
        ax.set_ylabel("cross-entropy (nats per token)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, out, "training_loss")


def fig_contrasts(studies, out: Path) -> str | None:
    c = _stacked(studies, "contrasts")
    if c is None:
        return None
    colour = _colours(studies, None)
    targets = [("share_right", "right-leaning share", 100)]
    targets += [(f"{m}_mean", MEASURES[m].title.split(" (")[0], 1) for m in MEASURES]
    targets += [("ppl_mean", "own perplexity", 1)]
    fig, axes = plt.subplots(1, len(targets), figsize=(14 + 4.5 * (len(targets) - 3), 4.2), layout="constrained")
    keys = sorted(c.groupby(["folder", "study", "arm"]).groups)
    several = len({(f, s) for f, s, _ in keys}) > 1
    for ax, (target, title, k) in zip(axes, targets):
        part = c[c["target"] == target]
        for i, (folder, study, arm) in enumerate(keys):
            a = part[(part["folder"] == folder) & (part["study"] == study) & (part["arm"] == arm)].sort_values(
                "generation"
            )
            a = a[a["estimate"].notna()]
            if a.empty:
                continue
            x = a["generation"] + (i - (len(keys) - 1) / 2) * 0.1  # side by side
            style = STYLES[sorted({(f, s) for f, s, _ in keys}).index((folder, study)) % len(STYLES)]
            ax.errorbar(
                x,
                a["estimate"] * k,
                yerr=[(a["estimate"] - a["lo"]) * k, (a["hi"] - a["estimate"]) * k],
                fmt="o",
                ls=style,
                color=colour.get(arm, "k"),
                ms=4,
                lw=1.2,
                capsize=2,
                label=f"{study}: {arm}" if several else arm,
            )
        ax.axhline(0, color="0.3", lw=0.8)
        base = ", ".join(sorted(c["baseline"].unique()))
        ax.set_title(f"{title}: arm minus {base}" + (" (points)" if k == 100 else ""), fontsize=10)
        _generations(ax)
        if not ax.lines[1:]:
            ax.text(
                0.5, 0.5, "not measured in these tables", ha="center", va="center", transform=ax.transAxes, color="0.4"
            )
    axes[0].set_ylabel("difference (95% CI)")
    axes[0].legend(fontsize=8)
    one_seed = not c["seed_variation_in_ci"].all()
    fig.suptitle(
        "Arm contrasts"
        + (" (one seed: CIs cover which articles were written, not run-to-run variation)" if one_seed else ""),
        fontsize=11,
    )
    return _save(fig, out, "arm_contrasts")


def fig_neurons(studies, out: Path) -> tuple[str | None, str]:
    """Significant neurons per layer for each target, the real count beside the surrogate null's, and
    the overlap between targets; plus an HTML table of the top neurons."""
    s = next((s for s in studies if s["neuron_tests"] is not None), None)
    if s is None:
        return None, ""
    tests = s["neuron_tests"]
    pairs = list(tests.groupby(["kind", "stat"]).groups)
    kind, stat = ("weight", "l2") if ("weight", "l2") in pairs else pairs[0]
    part = tests[(tests["kind"] == kind) & (tests["stat"] == stat)]
    targets = sorted(part["target"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [2, 1]}, layout="constrained")
    layers = sorted(part["layer"].unique())
    width = 0.8 / max(len(targets), 1)
    for i, target in enumerate(targets):
        counts = part[part["target"] == target].groupby("layer")["significant"].sum().reindex(layers, fill_value=0)
        axes[0].bar(
            [layer + (i - (len(targets) - 1) / 2) * width for layer in layers],
            counts.values,
            width,
            color=PALETTE[i],
            label=target,
        )
    axes[0].set_xlabel("layer")
    axes[0].set_xticks(layers)
    axes[0].set_ylabel("significant neurons (BH q < 0.05)")
    axes[0].set_title(f"{kind}/{stat}, within-trajectory test", fontsize=10)
    axes[0].legend(fontsize=8)
    rows = []
    for mode, report in s["neuron_summary"].items():
        for target, r in report.get(f"{kind}/{stat}", {}).get("null", {}).items():
            rows.append((f"{mode}\n{target}", r["significant"], r["null_expected_significant"] or 0))
    if rows:
        x = range(len(rows))
        real = axes[1].bar([i - 0.2 for i in x], [r[1] for r in rows], 0.4, color=PALETTE[0], label="real target")
        null = axes[1].bar(
            [i + 0.2 for i in x], [r[2] for r in rows], 0.4, color="0.6", label="surrogate null (expected)"
        )
        axes[1].bar_label(real, fmt="%g", fontsize=8)
        axes[1].bar_label(null, fmt="%.1f", fontsize=8)
        axes[1].set_xticks(list(x), [r[0] for r in rows], fontsize=8)
        axes[1].set_ylabel("neurons flagged")
        axes[1].set_title("flagged vs flagged when nothing is there", fontsize=10)
        axes[1].legend(fontsize=8)
    for ax in axes:  # counts: from 0, whole numbers (with none flagged the axis would run from -0.04)
        ax.set_ylim(0, max(ax.get_ylim()[1], 1))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    n = part.groupby("target").size().iloc[0]
    sig = {t: set(zip(*part[(part.target == t) & part.significant][["layer", "neuron"]].to_numpy().T)) for t in targets}
    if len(targets) == 2:
        a, b = targets
        fig.suptitle(
            f"{n} neurons: {len(sig[a] - sig[b])} only {a}, {len(sig[a] & sig[b])} both, "
            f"{len(sig[b] - sig[a])} only {b}",
            fontsize=11,
        )
    name = _save(fig, out, "neurons")
    top = (
        part.assign(abs_t=part["t"].abs())
        .sort_values("p")
        .groupby("target")
        .head(10)[["target", "layer", "neuron", "beta", "t", "p", "q", "n_obs", "significant"]]
    )
    return name, top.to_html(index=False, float_format=lambda v: f"{v:.3g}", classes="t")


# --- dose-response: a sweep's arms by their value ------------------------------------------------


def dose_targets() -> list[tuple[str, str]]:
    """(target, title) of the dose-response figure: the leaning, the leaning beyond decay, quality."""
    return [("share_right", "right-leaning share"), ("lean_index_beyond_null", "lean index beyond the decay null")] + [
        (f"{m}_mean", MEASURES[m].title.split(" (")[0]) for m in MEASURES
    ]


def dose_response(study: dict) -> pd.DataFrame | None:
    """A sweep's arms as rows per (value, target): the last generation's change from G0 (arm_trends)
    and its contrast with the baseline arm (arm_contrasts), with 95% CIs. None without a sweep."""
    sweep = _config(study).get("sweep")
    if not sweep or study["trends"] is None:
        return None
    rows = []
    targets = [t for t, _ in dose_targets()]
    for value in sweep["values"]:
        arm = SweepConfig.model_validate(sweep).arm_name(value)
        trend = study["trends"][(study["trends"]["arm"] == arm) & study["trends"]["target"].isin(targets)]
        c = study["contrasts"]
        if c is not None:
            c = c[(c["arm"] == arm) & c["target"].isin(targets)]
            c = c[c["generation"] == c["generation"].max()] if len(c) else c
        for r in trend.itertuples(index=False):
            row = {"key": sweep["key"], "value": value, "arm": arm, "target": r.target, "generation": r.last_generation}
            row |= {"change": r.change, "change_lo": r.change_lo, "change_hi": r.change_hi, "change_p": r.change_p}
            row["seed_variation_in_ci"] = r.seed_variation_in_ci
            hit = c[c["target"] == r.target] if c is not None else pd.DataFrame()
            row |= {
                "contrast": hit["estimate"].iloc[0] if len(hit) else float("nan"),
                "contrast_lo": hit["lo"].iloc[0] if len(hit) else float("nan"),
                "contrast_hi": hit["hi"].iloc[0] if len(hit) else float("nan"),
                "contrast_p": hit["p"].iloc[0] if len(hit) else float("nan"),
                "baseline": hit["baseline"].iloc[0] if len(hit) else None,
            }
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


def fig_dose_response(studies, out: Path) -> str | None:
    """Per target, the swept value against the change from G0 and against the contrast with the
    baseline arm, with 95% CIs; one line per study that has a sweep."""
    doses = [(s, d) for s in studies if (d := dose_response(s)) is not None]
    if not doses:
        return None
    targets = dose_targets()
    fig, axes = plt.subplots(2, len(targets), figsize=(4.6 * len(targets), 7), layout="constrained", squeeze=False)
    for j, (s, d) in enumerate(doses):
        numeric = pd.api.types.is_numeric_dtype(d["value"])
        for col, (target, title) in enumerate(targets):
            part = d[d["target"] == target]
            k = 100 if target == "share_right" else 1
            x = part["value"] if numeric else part["value"].astype(str)
            for row, (stat, what) in enumerate((("change", "change from G0"), ("contrast", "minus baseline"))):
                ax = axes[row, col]
                y, lo, hi = part[stat] * k, part[f"{stat}_lo"] * k, part[f"{stat}_hi"] * k
                ax.errorbar(
                    x,
                    y,
                    yerr=[y - lo, hi - y],
                    fmt="o",
                    ls=STYLES[j % len(STYLES)],
                    color=PALETTE[j],
                    ms=4,
                    lw=1.4,
                    capsize=3,
                    label=s["label"],
                )
                ax.axhline(0, color="0.3", lw=0.8)
                base = (
                    part["baseline"].dropna().iloc[0] if stat == "contrast" and part["baseline"].notna().any() else ""
                )
                gen = int(part["generation"].max()) if len(part) else 0
                ax.set_title(
                    f"{title}: G{gen} {what}{f' ({base})' if base else ''}" + (" (points)" if k == 100 else ""),
                    fontsize=9,
                )
                ax.set_xlabel(d["key"].iloc[0])
                ax.grid(alpha=0.3)
                if numeric and (part["value"] > 0).all() and part["value"].max() >= 10 * part["value"].min():
                    ax.set_xscale("log")
                    ax.set_xticks(list(part["value"]), [f"{v:g}" for v in part["value"]])
                    ax.xaxis.set_minor_formatter(NullFormatter())
    axes[0, 0].set_ylabel("change from G0 (95% CI)")
    axes[1, 0].set_ylabel("arm minus baseline (95% CI)")
    if len(doses) > 1:
        axes[0, 0].legend(fontsize=8)
    one_seed = not all(d["seed_variation_in_ci"].all() for _, d in doses)
    fig.suptitle(
        "Dose-response: each swept value's last generation"
        + (" (one seed: CIs cover which articles were written, not run-to-run variation)" if one_seed else ""),
        fontsize=11,
    )
    return _save(fig, out, "dose_response")


# --- the W&B Report -------------------------------------------------------------------------------


# Functions, not constants: a measure registered after import (biasamp.instruments.registry) counts.
def line_metrics() -> list[str]:
    """The trajectory runs' metrics the Report draws by generation, each with its logged 95% CI."""
    return (
        [f"share_{lab}" for lab in LABELS]
        + ["lean_index", "share_right_calibrated", "lean_index_calibrated", "prev_right"]
        + [f"{m}_mean" for m in MEASURES]
    )


def bar_metrics() -> list[str]:
    """The metrics compared across arms at the last generation."""
    return ["share_right", "lean_index"] + [f"{m}_mean" for m in MEASURES]


def report_targets() -> list[str]:
    """The arm contrasts the Report's text states."""
    return ["share_right", "share_right_calibrated", "lean_index", "lean_index_beyond_null"] + [
        f"{m}_mean" for m in MEASURES
    ]


def wandb_entity(spec: str, studies: list[dict]) -> tuple[str, str]:
    """`--wandb ENTITY/PROJECT`, or `--wandb PROJECT` with the entity of the studies' config."""
    entity, project = spec.split("/", 1) if "/" in spec else (None, spec)
    if entity is None:
        entity = next((e for s in studies if (e := _config(s).get("wandb", {}).get("entity"))), None)
    if not entity or not project:
        raise ValueError(
            f"--wandb {spec}: a W&B Report belongs to an entity: ENTITY/PROJECT (your user or team name), "
            "or set wandb.entity in the study's config"
        )
    return entity, project


def _config(study: dict) -> dict:
    return (study["manifest"] or {}).get("config") or {}


def _study_name(study: dict) -> str:
    return _config(study).get("study") or study["summary_arms"]["study"].iloc[0]


def _fmt(v: float) -> str:
    return "" if pd.isna(v) else f"{v:.3g}"


def report_text(study: dict) -> str:
    """Markdown: the arm contrasts at the last generation and the neuron counts beside the count the
    surrogate null flags (what the HTML page states, for the W&B Report)."""
    lines = []
    c = study["contrasts"]
    if c is not None and len(c):
        last = c[c["target"].isin(report_targets())]
        last = last[last["generation"] == last["generation"].max()]
        base = ", ".join(sorted(last["baseline"].unique()))
        lines += [
            f"**Arm contrasts at G{int(last['generation'].max())}** (arm minus {base}; 95% bootstrap CI over seeds "
            "and articles; p from the bootstrap SE)",
            "",
            "| arm | target | estimate | 95% CI | p | seeds |",
            "|---|---|---|---|---|---|",
        ]
        for r in last.sort_values(["arm", "target"]).itertuples(index=False):
            lines.append(
                f"| {r.arm} | {r.target} | {_fmt(r.estimate)} | [{_fmt(r.lo)}, {_fmt(r.hi)}] | {_fmt(r.p)} | "
                f"{r.n_seeds} |"
            )
    for mode, summary in study["neuron_summary"].items():
        rows = [
            f"| {key} | {target} | {r['significant']} | {_fmt(r['null_expected_significant'])} | "
            f"{r['null_max_significant'] if r['null_max_significant'] is not None else ''} |"
            for key, part in summary.items()
            if isinstance(part, dict) and "null" in part
            for target, r in part["null"].items()
        ]
        if rows:
            lines += [
                "",
                f"**Neurons flagged** ({mode} test, BH q < 0.05) beside what the surrogate null flags where "
                "nothing is there",
                "",
                "| neurons | target | flagged | null: expected | null: max |",
                "|---|---|---|---|---|",
                *rows,
            ]
    return "\n".join(lines) or "No arm contrasts or neuron tests yet (`biasamp analyze`)."


def wandb_report(studies: list[dict], entity: str, project: str):
    """The W&B Report of one or more studies, as the wandb-workspaces library's object (nothing is
    sent: `publish` does). Per study a run set of its trajectory runs (its W&B group, job type =
    arm); panels by generation grouped by arm (mean, band = min-max across seeds, and the logged 95%
    CIs as _lo/_hi lines); the last generation per arm as bars; the study-level tables; the arm
    contrasts and neuron counts as text; a sweep's dose-response over its value."""
    import wandb_workspaces.reports.v2 as wr

    names = [_study_name(s) for s in studies]
    arms = {n: sorted(s["summary_arms"]["arm"].unique()) for n, s in zip(names, studies)}
    group = dict(groupby="config.arm", groupby_aggfunc="mean", groupby_rangefunc="minmax")

    def runset(name: str, job_types: list[str], label: str):
        quoted = ", ".join(f"'{j}'" for j in job_types)
        return wr.Runset(
            entity=entity,
            project=project,
            name=label,
            filters=f"Group == '{name}' and JobType in [{quoted}]",
            groupby=["config.arm"],
        )

    trajectories = [runset(n, arms[n], f"{n}: trajectories") for n in names]
    lines = [
        wr.LinePlot(
            title=f"{m} by generation (mean over seeds, band min-max; _lo/_hi: the 95% CI)",
            x="generation",
            y=[m, f"{m}_lo", f"{m}_hi"],
            **group,
        )
        for m in line_metrics()
    ]
    lines += [
        wr.LinePlot(
            title="lean index vs its degradation null", x="generation", y=["lean_index", "null_lean_index"], **group
        ),
        wr.LinePlot(title="perplexity: own and reference", x="generation", y=["ppl_mean", "ppl_ref_mean"], **group),
        wr.LinePlot(title="training loss by generation", x="generation", y=["train_loss"], **group),
    ]
    bars = [
        wr.BarPlot(
            title=f"{m} at the last generation (mean over seeds, min-max)", metrics=[m], orientation="v", **group
        )
        for m in bar_metrics()
    ]
    blocks = [
        wr.P(
            "Made by `biasamp report`: "
            + "; ".join(f"study {n} ({len(arms[n])} arms: {', '.join(arms[n])})" for n in names)
            + ". Each trajectory is one run in its study's W&B group, job type = arm, step = generation."
        ),
        wr.H2("By generation"),
        wr.PanelGrid(runsets=trajectories, panels=lines),
        wr.H2("Last generation, per arm"),
        wr.PanelGrid(runsets=[runset(n, arms[n], f"{n}: trajectories") for n in names], panels=bars),
    ]
    for n, s in zip(names, studies):
        blocks += [wr.H2(f"{n}: arm contrasts and neurons"), wr.MarkdownBlock(text=report_text(s))]
        tables = [
            wr.WeavePanelSummaryTable(table_name=t, layout=wr.Layout(w=24, h=10))
            for t in ("arm_contrasts", "arm_trends", "neuron_counts")
        ]
        blocks.append(wr.PanelGrid(runsets=[runset(n, ["analyze-within"], f"{n}: analyze")], panels=tables))
        sweep = _config(s).get("sweep")
        if sweep and dose_response(s) is not None:
            swept = [SweepConfig.model_validate(sweep).arm_name(v) for v in sweep["values"]]
            blocks += [
                wr.H2(f"{n}: dose-response over {sweep['key']}"),
                wr.PanelGrid(
                    runsets=[runset(n, swept, f"{n}: {sweep['arm']} at each {sweep['key']}")],
                    panels=[
                        wr.ScatterPlot(
                            title=f"{t} at the last generation vs {sweep['key']}",
                            x=wr.Config("sweep_value"),
                            y=wr.SummaryMetric(t),
                        )
                        for t in bar_metrics()
                    ],
                ),
            ]
    title = f"biasamp: {', '.join(names)}"
    return wr.Report(
        entity=entity,
        project=project,
        title=title[:128],
        description="Leaning, quality and perplexity by generation, per arm; arm contrasts; neurons.",
        blocks=blocks,
    )


def publish(report) -> str:
    """Save the Report to W&B (network and an API key) and return its URL."""
    report.save()
    return report.url


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]  # a measure's title starts lowercase (it is also an axis title)


def _table(df: pd.DataFrame | None, cols: list[str] | None = None) -> str:
    if df is None or df.empty:
        return "<p>(none)</p>"
    df = df[cols] if cols else df
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", classes="t", na_rep="")


CSS = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}
table.t{border-collapse:collapse;font-size:.8em;margin:.5em 0}
table.t td,table.t th{border:1px solid #ccc;padding:2px 6px}
pre{background:#f6f6f6;padding:1em;font-size:.8em;overflow:auto;max-height:30em}h2{border-bottom:1px solid #ddd}"""


def build(
    studies: list[dict],
    out: Path,
    paper: Path | None = None,
    simulation: Path | None = None,
) -> Path:
    """Write DIR/index.html and the figures (PNG + SVG) of studies (`load_all`); returns the page's path."""
    if simulation is not None and not list(Path(simulation).glob("simulation_*.png")):
        raise FileNotFoundError(f"--simulation {simulation}: no simulation_*.png (run `biasamp simulate --out DIR`)")
    paper_study = load(paper) if paper else None
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        (
            fig_leaning(studies, paper_study, out),
            "Leaning shares and lean index by generation, one line per arm "
            "(95% CI bands)" + ("; the authors' released numbers dashed" if paper_study else "") + ". Dotted, in the "
            "arm's colour: the degradation null, the same reading of the real articles cut and looped to that "
            "generation's length and repetition; the gap between the two lines is the drift beyond decay (no null "
            "where the tables hold no generated text, e.g. the authors' imported numbers).",
        ),
        (
            fig_leaning_calibrated(studies, paper_study, out),
            "The same readings calibrated to each generation's decay, in label units: the share of articles that "
            "read as left / center / right real articles of the study's corpus read once cut and looped like that "
            "generation's text (95% CI bands: articles and their calibration articles resampled together). Thin: "
            "the raw reading above. The raw reading responds to a true change at a fraction of its size, smaller "
            "as text decays (docs/measuring.md); the calibrated one at its size.",
        ),
        (
            fig_quality(studies, paper_study, out),
            _sentence(f"{', '.join(m.title for m in MEASURES.values())} and perplexity by generation."),
        ),
        (
            fig_quality_association(studies, paper_study, out),
            "Within each generation, the association of each measure (the quality index, ...) with each leaning "
            "probability (Spearman rho, 95% CI). Near zero: the instrument does not read low-quality text as one "
            "leaning.",
        ),
        (fig_training(studies, out), "Training loss: per generation (mean over seeds) and per optimizer step."),
        (fig_contrasts(studies, out), "Each arm minus the baseline arm, per generation, with 95% bootstrap CIs."),
    ]
    figures.append(
        (
            fig_dose_response(studies, out),
            "A sweep's arms by their value: the last generation's change from G0 (top) and its difference from "
            "the baseline arm (bottom), with 95% bootstrap CIs (seeds, then articles). Beyond the decay null: the "
            "leaning minus what cutting and looping the real articles alone reads.",
        )
    )
    neuron_fig, top_html = fig_neurons(studies, out)
    figures.append(
        (
            neuron_fig,
            "Neurons whose change moves with each target (within-trajectory test), the "
            "count flagged on surrogate targets where nothing is there, and the overlap.",
        )
    )
    if simulation is not None:
        for png in sorted(Path(simulation).glob("simulation_*.png")):
            shutil.copy(png, out / png.name)
            figures.append((png.stem, "The paper's appendix simulation (`biasamp simulate`)."))
    body = [f"<h1>biasamp report: {html.escape(', '.join(s['label'] for s in studies))}</h1>"]
    for name, caption in figures:
        if name is None:
            continue
        svg = f' (<a href="{name}.svg">SVG</a>)' if (out / f"{name}.svg").exists() else ""
        body.append(
            f'<figure><img src="{name}.png" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}{svg}</figcaption></figure>"
        )
    if top_html:
        body.append("<h2>Top neurons (smallest p per target)</h2>" + top_html)
    for s in studies:
        body.append(f"<h2>{html.escape(s['label'])}</h2>")
        if s["manifest"]:
            try:  # the study's power, as `biasamp validate` stated it
                body.append(f"<p>{html.escape(power_statement(from_dict(_config(s))))}</p>")
            except ValueError:  # a config this version no longer reads: the page goes on without it
                pass
        if missing := unfinished(s):
            body.append(
                f"<p><strong>Not in these tables</strong> (failed or not run yet; `biasamp run` runs only them): "
                f"{html.escape(', '.join(missing))}</p>"
            )
        if s["contrasts"] is not None:
            last = s["contrasts"].sort_values("generation").groupby(["study", "arm", "target"]).tail(1)
            body.append(
                "<h3>Arm contrasts at the last generation</h3>"
                + _table(
                    last, ["study", "arm", "baseline", "generation", "target", "estimate", "lo", "hi", "p", "n_seeds"]
                )
            )
        body.append("<h3>Summary per arm and generation</h3>" + _table(s["summary_arms"]))
        if s["manifest"]:
            m = s["manifest"]
            body.append(
                f"<h3>Config (hash {html.escape(str(m.get('science_hash')))})</h3>"
                f"<pre>{html.escape(yaml.safe_dump(m.get('config', {}), sort_keys=False))}</pre>"
                f"<h3>Versions</h3><pre>{html.escape(json.dumps(m.get('versions', {}), indent=1))}</pre>"
            )
    page = out / "index.html"
    with atomic(page) as tmp:
        tmp.write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>biasamp report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
        )
    return page
