"""Per-generation summaries of the `scores` table, with bootstrap CIs; the authors' numbers imported.

summary (one row per study, arm, seed, generation): n_articles, share_left/center/right (share of
articles whose argmax label it is), lean_index (mean p_right - mean p_left), prev_left/center/right
(the shares by the configured prevalence method, biasamp.instruments.prevalence; empty without a
calibration table where the method needs one) and each measure's mean (tqi_mean); the degradation null: null_share_*
and null_lean_index, the same readings of the real articles cut and looped to this generation's
length and repetition (biasamp.stages.score); share_*_calibrated and lean_index_calibrated, the
readings in label units, calibrated on those same degraded real articles and their labels
(prevalence.calibrated_readings); each with _lo/_hi 95% bootstrap bounds (articles;
for prev_* also the calibration outlets and the shift of the corpus's own sources); tqi_rho_*
(each measure's), the within-generation Spearman correlation of the measure with p_* (95% Fisher-z bounds);
ppl_mean, ppl_ref_mean.
summary_arms (one row per study, arm, generation): the same across seeds, bootstrapped in two
stages (seeds, then articles within each drawn seed); n_seeds.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from biasamp.config import LABELS, ScoringConfig
from biasamp.instruments import leaning as offline_leaning
from biasamp.instruments import prevalence
from biasamp.instruments.prevalence import READINGS, reading_values
from biasamp.instruments.registry import MEASURES, instrument_settings
from biasamp.tables import ADDRESS_COLUMNS, TABLES, file_metadata


def _stats() -> list[str]:
    """The summary statistics that are means of per-article values, in _values' column order."""
    return READINGS + [f"{m}_mean" for m in MEASURES] + [f"null_{r}" for r in READINGS]


PROBS = [f"p_{lab}" for lab in LABELS]
NULL_PROBS = [f"null_{p}" for p in PROBS]


def null_probs(part: pd.DataFrame) -> np.ndarray:
    """The degradation null's probabilities (n, 3); NaN where the scores have none (imported numbers)."""
    return part[NULL_PROBS].to_numpy(float) if set(NULL_PROBS) <= set(part.columns) else np.full((len(part), 3), np.nan)


def real_labels(part: pd.DataFrame) -> np.ndarray:
    """The labels of the real articles the scored ones continue (the calibration's); none: no calibration."""
    return part["label"].to_numpy() if "label" in part else np.full(len(part), "")


def measure_values(part: pd.DataFrame) -> list[np.ndarray]:
    """Each registered measure's column per article; NaN where the scores lack it."""
    return [part[m].to_numpy(dtype=float) if m in part else np.full(len(part), np.nan) for m in MEASURES]


def _values(part: pd.DataFrame, method: str) -> np.ndarray:
    """Per article: the READINGS, each measure, the READINGS of its degradation null -> their means
    are the summary statistics (_stats()); then what the prevalence method averages (3 columns) and
    what the calibrated readings are computed from (prevalence.N_CALIBRATION_VALUES columns)."""
    probs, null = part[PROBS].to_numpy(float), null_probs(part)
    return np.column_stack(
        [
            reading_values(probs),
            *measure_values(part),
            reading_values(null),
            prevalence.article_values(probs, method),
            prevalence.calibration_values(probs, null, real_labels(part)),
        ]
    )


def quality_association(part: pd.DataFrame) -> dict:
    """Within one generation: Spearman's rho of each measure (the quality index tqi, ...) with each
    leaning probability, with 95% Fisher-z bounds (se 1.06 / sqrt(n - 3), Fieller et al. 1957). A
    leaning instrument that reads degraded text as one label shows a negative tqi rho for that label."""
    from scipy.stats import spearmanr

    row = {}
    for m in MEASURES:
        ok = part[[m, *PROBS]].dropna() if m in part else part[PROBS].iloc[:0]
        for lab in LABELS:
            name = f"{m}_rho_{lab}"
            rho = np.nan
            if len(ok) > 3 and ok[m].nunique() > 1 and ok[f"p_{lab}"].nunique() > 1:
                rho = float(spearmanr(ok[m], ok[f"p_{lab}"]).statistic)
            half = 1.96 * 1.06 / np.sqrt(max(len(ok) - 3, 1))
            z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = rho, float(np.tanh(z - half)), float(np.tanh(z + half))
    return row


def boot_means(values_per_seed: list[np.ndarray], rng, n_boot: int):
    """Means of per-article values (k columns) over every seed's articles, and n_boot bootstrap
    means (n_boot, k): seeds resampled, then articles within each drawn seed. NaN values (a score
    not measured) are left out."""
    pooled = np.concatenate(values_per_seed)
    s = len(values_per_seed)
    n = np.array([len(v) for v in values_per_seed])
    padded = np.full((s, n.max(), pooled.shape[1]), np.nan)
    for i, v in enumerate(values_per_seed):
        padded[i, : len(v)] = v
    seeds = rng.integers(0, s, size=(n_boot, s)) if s > 1 else np.zeros((n_boot, 1), dtype=int)
    arts = np.floor(rng.random((n_boot, s, n.max())) * n[seeds][:, :, None]).astype(int)
    arts = np.where(np.arange(n.max())[None, None, :] < n[seeds][:, :, None], arts, -1)
    draws = np.where((arts >= 0)[..., None], padded[seeds[:, :, None], np.maximum(arts, 0)], np.nan)
    with warnings.catch_warnings():  # a statistic with no values at all (e.g. no tqi) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(pooled, axis=0), np.nanmean(draws.reshape(n_boot, -1, pooled.shape[1]), axis=1)


def _row(values_per_seed: list[np.ndarray], rng, n_boot: int, calibration, method: str) -> dict:
    """Point estimates and percentile CIs; several seeds: resample seeds, then articles in each.
    The prevalence estimate reuses the same article draws, each with its own calibration draw."""
    point, boot = boot_means(values_per_seed, rng, n_boot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=0)
    row = {}
    stats = _stats()
    for k, name in enumerate(stats):
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = point[k], lo[k], hi[k]
    k, kc = len(stats), len(stats) + len(LABELS)
    est, plo, phi = prevalence.estimate(
        point[k:kc], boot[:, k:kc], calibration, method, rng, sum(len(v) for v in values_per_seed)
    )
    for i, lab in enumerate(LABELS):
        row[f"prev_{lab}"], row[f"prev_{lab}_lo"], row[f"prev_{lab}_hi"] = est[i], plo[i], phi[i]
    # Calibrated to this version's own decay: the same article draws carry its calibration articles.
    cal_point, cal_boot = prevalence.calibrated_readings(point[kc:]), prevalence.calibrated_readings(boot[:, kc:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cal_lo, cal_hi = np.nanpercentile(cal_boot, [2.5, 97.5], axis=0)
    for i, name in enumerate(prevalence.CALIBRATED):
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = cal_point[i], cal_lo[i], cal_hi[i]
    return row


def summarize(
    scores: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    calibration: pd.DataFrame | None = None,
    method: str = "pacc",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both summary tables; `calibration` (the classifier's) and `method` give the prev_* columns."""
    rng = np.random.default_rng(seed)
    per_seed, per_arm = [], []
    for key, part in scores.groupby(ADDRESS_COLUMNS, sort=True):
        row = dict(zip(ADDRESS_COLUMNS, key))
        row.update(n_articles=len(part), **_row([_values(part, method)], rng, n_boot, calibration, method))
        row.update(quality_association(part), ppl_mean=part["ppl"].mean(), ppl_ref_mean=part["ppl_ref"].mean())
        per_seed.append(row)
    for key, part in scores.groupby(["study", "arm", "generation"], sort=True):
        row = dict(zip(["study", "arm", "generation"], key))
        groups = [_values(g, method) for _, g in part.groupby("seed", sort=True)]
        row.update(n_seeds=len(groups), n_articles=len(part), **_row(groups, rng, n_boot, calibration, method))
        row.update(quality_association(part), ppl_mean=part["ppl"].mean(), ppl_ref_mean=part["ppl_ref"].mean())
        per_arm.append(row)
    return pd.DataFrame(per_seed), pd.DataFrame(per_arm)


SETTINGS_KEY = "biasamp.scoring"  # Parquet footer key of a scores file: the settings that made it


def scoring_settings(cfg: ScoringConfig) -> str:
    """What decides the per-article scores (not batch size, bootstrap or the prevalence method, which
    the summaries apply afresh each time), with a hash of an offline instrument's file. Every scores
    file records it; files made with different settings are never pooled."""
    return json.dumps(
        {
            "classifier": instrument_settings(cfg.classifier, offline_leaning.model_file),
            # title_body is how every scores file was made before `read` existed: left out, it keeps their settings
            **({"classifier_reads": cfg.classifier.read} if cfg.classifier.read != "title_body" else {}),
            **{m.key or column: m.settings(cfg) for column, m in MEASURES.items()},
            "perplexity_max_tokens": cfg.perplexity_max_tokens,
        },
        sort_keys=True,
    )


def settings_of_scores(out: Path) -> dict[str, list[str]]:
    """Scoring settings -> the scores files (arm__seed__gen) made with them ('unrecorded' for files
    from before settings were recorded, e.g. imported numbers)."""
    found: dict[str, list[str]] = {}
    where = TABLES["scores"].where(out)
    for f in sorted(where.glob("*.parquet")) if where.is_dir() else []:
        found.setdefault(file_metadata(f, SETTINGS_KEY) or "unrecorded", []).append(f.stem)
    return found


def check_scores_settings(out: Path, expected: str | None = None) -> None:
    """Refuse to pool (or to add to) scores made with other settings, naming `biasamp score`."""
    found = settings_of_scores(out)
    if expected is not None:
        found.setdefault(expected, [])
    if len(found) > 1:
        parts = "; ".join(f"{len(files)} file(s) (e.g. {files[0]}) with {s}" for s, files in found.items() if files)
        asked = f"; this run asks for {expected}" if expected is not None else ""
        raise ValueError(
            f"{out}/scores: made with different scoring settings ({parts}{asked}). Rescore every "
            f"generation with `biasamp score {out}` (add the --set of the settings you want), or "
            f"resume with the settings the scores were made with"
        )


def write_summaries(
    out: Path,
    scores: pd.DataFrame,
    n_boot: int,
    calibration: pd.DataFrame | None = None,
    method: str = "pacc",
    metadata: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both summary tables from the scores, written (`metadata` into both footers); returned as
    written (declared column order). Scores made with different scoring settings are refused
    (check_scores_settings)."""
    check_scores_settings(out)
    per_seed, per_arm = summarize(scores, n_boot, calibration=calibration, method=method)
    TABLES["summary"].write(per_seed, out, metadata=metadata)
    TABLES["summary_arms"].write(per_arm, out, metadata=metadata)
    return TABLES["summary"].check(per_seed), TABLES["summary_arms"].check(per_arm)


# --- the authors' released numbers --------------------------------------------------------------

_FILE = re.compile(
    r"^(?P<arm>[A-Za-z0-9]+?)(?P<center>_Center-Leaning-Only)?_(?P<what>Bias_Performance|Generation_Quality|Perplexity)\.csv$"
)


def import_paper(folder: Path, study: str = "paper") -> tuple[pd.DataFrame, list[str]]:
    """The authors' per-article CSVs as a `scores` table, and warnings.

    Generation g in their files is G(g-1) in the paper and here. Arms come from the file names;
    the Center-Leaning-Only files form the study `{study}_center_only`. GPT2_Bias_Performance
    (GPT-2 before any fine-tuning) becomes arm gpt2_base, generation -1. Quality and perplexity
    files have no article ids: they are joined by position within a generation, which is only done
    where the row counts agree (otherwise tqi / ppl stay empty and a warning says so).
    """
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files: dict[tuple[str, str], dict[str, Path]] = {}
    for path in sorted(Path(folder).rglob("*.csv")):  # the folder itself, or one that holds it
        m = _FILE.match(path.name)
        if not m:
            continue
        name = study + ("_center_only" if m["center"] else "")
        arm = "gpt2_base" if m["arm"] == "GPT2" else m["arm"].lower()
        files.setdefault((name, arm), {})[m["what"]] = path
    if not files:
        raise FileNotFoundError(f"{folder}: no *_Bias_Performance.csv files in it or below it")
    notes, parts = [], []
    for (name, arm), found in sorted(files.items()):
        if "Bias_Performance" not in found:
            notes.append(f"{name}/{arm}: no Bias_Performance file, skipped")
            continue
        bias = pd.read_csv(found["Bias_Performance"])
        needed = {"Article_ID", "Left_Score", "Center_Score", "Right_Score"}
        if not needed <= set(bias.columns):
            raise ValueError(f"{found['Bias_Performance']}: expected columns {sorted(needed)}")
        gen = bias["Generation"] - 1 if "Generation" in bias else pd.Series(-1, index=bias.index)
        df = pd.DataFrame(
            {
                "study": name,
                "arm": arm,
                "seed": 0,
                "generation": gen.astype(int),
                "article_id": bias["Article_ID"].astype(str),
                "p_left": bias["Left_Score"],
                "p_center": bias["Center_Score"],
                "p_right": bias["Right_Score"],
            }
        )
        probs = df[["p_left", "p_center", "p_right"]].to_numpy()
        df["label"] = np.array(LABELS)[probs.argmax(axis=1)]
        for what, src, col in (("Generation_Quality", "GibberishLevel", "tqi"), ("Perplexity", "Perplexity", "ppl")):
            df[col] = np.nan
            if what not in found:
                continue
            extra = pd.read_csv(found[what])
            extra_gen = extra["Generation"] - 1
            for g in sorted(df["generation"].unique()):
                rows, vals = df.index[df["generation"] == g], extra.loc[extra_gen == g, src].to_numpy()
                if len(rows) == len(vals):
                    df.loc[rows, col] = vals
                else:
                    notes.append(
                        f"{found[what].name}: G{g} has {len(vals)} rows, the scores {len(rows)}: {col} left empty"
                    )
        for m in MEASURES:  # measures the authors did not take stay empty
            df[m] = df.get(m, np.nan)
        df["ppl_ref"] = np.nan
        df[NULL_PROBS] = np.nan  # no generated text released: no degradation null
        parts.append(TABLES["scores"].check(df))
    return pd.concat(parts, ignore_index=True), notes
