"""Does a study's leaning change come out at its true size? Planted changes of leaning, under decay,
through the study's own code path (score.degradation_null, analyze.arm_contrasts), read raw, beyond
the degradation null and calibrated (prevalence.calibrated_readings).

A planted study: n prompts, real articles with labels in equal shares (as the study corpus is). At G0
each prompt's "generated" article is another real article of the prompt's label, intact; at G1 a share
of the non-right prompts' articles are replaced by right articles, so the true right share rises by
`delta`, and every G1 body decays as collapse does (the decays below). As in a study, each article
keeps its prompt's title (the title is the prompt), and the degradation null is the prompt's own body
cut and looped to the generated body's profile. Articles come from one of two pools of articles the
shipped classifier never read (leaning.unseen_pools): of outlets it was trained on (what a fine-tuned
generator imitates) or of outlets held out of it. Per cell: the mean true change, each reading's mean
change (as a share of the true one where that is not 0), the calibrated change's mean error and its
95% CI's coverage.

    python bench/leaning_calibration.py [--replicates 60] [--articles 300] [--read body|title_body] [--record]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from biasamp.artifacts import write_json
from biasamp.config import LABELS
from biasamp.instruments import leaning
from biasamp.instruments.degrade import degrade, degrade_to_profile
from biasamp.stages.analyze import arm_contrasts
from biasamp.stages.score import degradation_null
from biasamp.text import classifier_text

ROOT = Path(__file__).parents[1]
ABP = ROOT.parent / "shared" / "data" / "article-bias-prediction"
MIN_WORDS = 120  # every decay below changes an article this long
DELTAS = (0.0, 0.15, 0.30)
# decay name -> the G1 body from a real body (G0 stays intact)
DECAYS = {
    "none": lambda body, i: body,
    "moderate": lambda body, i: degrade(" ".join(body.split()[:100]), "32-word blocks + phrase x3", i),
    "collapse": lambda body, i: degrade_to_profile(body, 120, 2 / 3),  # 40 words looped to 120
}
READINGS = ("share_right", "share_right_beyond_null", "share_right_calibrated")


def generation(pool_by_label, prompts, labels, g, decay, model, rng, read) -> pd.DataFrame:
    """Generation g's scores: per prompt another real article of the given label, decayed, read with
    the prompt's title; the null the prompt's own body cut and looped to that profile."""
    bodies = []
    for i, (lab, prompt_id) in enumerate(zip(labels, prompts["article_id"])):
        src = pool_by_label[lab]
        pick = src.iloc[rng.integers(len(src))]
        while pick["article_id"] == prompt_id:  # another article than the prompt's own
            pick = src.iloc[rng.integers(len(src))]
        bodies.append(DECAYS[decay](pick["text"], i))
    articles = pd.DataFrame({"article_id": prompts["article_id"], "title": prompts["title"], "text": bodies})
    generated = [classifier_text(t, b, read) for t, b in zip(prompts["title"], bodies)]
    p, p0 = model.probabilities(generated), model.probabilities(degradation_null(articles, prompts, read))
    return pd.DataFrame(
        {
            "study": "planted",
            "arm": "a",
            "seed": 0,
            "generation": g,
            "article_id": prompts["article_id"].to_numpy(),
            "label": prompts["source_label"].to_numpy(),
            "ppl": np.nan,
            **{f"p_{lab}": p[:, k] for k, lab in enumerate(LABELS)},
            **{f"null_p_{lab}": p0[:, k] for k, lab in enumerate(LABELS)},
        }
    )


def replicate(pool, model, rng, n, read) -> list[dict]:
    """One draw of prompts and G0 (intact), then G1 at every (decay, delta): the readings' changes."""
    by_label = {lab: part.reset_index(drop=True) for lab, part in pool.groupby("source_label")}
    prompts = pd.concat([by_label[lab].sample(n // 3, random_state=rng) for lab in LABELS], ignore_index=True)
    g0 = generation(by_label, prompts, prompts["source_label"], 0, "none", model, rng, read)
    found = []
    for decay in DECAYS:
        for delta in DELTAS:
            flip = (prompts["source_label"] != "right") & (rng.random(len(prompts)) < delta * 1.5)  # 1.5: 1 / (2/3)
            g1 = generation(
                by_label, prompts, np.where(flip, "right", prompts["source_label"]), 1, decay, model, rng, read
            )
            truth = float(flip.mean())
            trends = arm_contrasts(pd.concat([g0, g1], ignore_index=True), n_boot=400, seed=len(found))[1]
            trends = trends.set_index("target")
            row = {"decay": decay, "delta": delta, "truth": truth}
            for r in READINGS:
                row[r] = trends.loc[r, "change"]
                row[f"{r}_covers"] = trends.loc[r, "change_lo"] <= truth <= trends.loc[r, "change_hi"]
            found.append(row)
    return found


def record(found: pd.DataFrame, args) -> None:
    """The power record: per decay, the standard deviation of each reading's error (estimate minus
    the true change) over replicates and planted changes, at args.articles articles and one seed."""
    sd = {
        decay: {
            "calibrated": float((f["share_right_calibrated"] - f["truth"]).std(ddof=1)),
            "raw": float((f["share_right"] - f.groupby("delta")["share_right"].transform("mean")).std(ddof=1)),
        }
        for decay, f in found.groupby("decay", sort=False)
    }
    path = leaning.power_path("bundled")
    write_json(
        {
            "articles": args.articles,
            "replicates": args.replicates,
            "read": args.read,
            "pool": "training outlets",
            "sd": sd,
            "made_by": f"python bench/leaning_calibration.py --record --replicates {args.replicates}",
        },
        path,
    )
    print(f"power record -> {path}: {sd}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=60, help="planted studies per row (20 cannot read a 0.05 bound)")
    ap.add_argument("--articles", type=int, default=300, help="prompts per planted study (per generation)")
    ap.add_argument("--read", choices=["body", "title_body"], default="body", help="scoring.classifier.read")
    ap.add_argument("--pool", choices=["training outlets", "held-out outlets"], action="append")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--record",
        action="store_true",
        help="write the spread of each decay's estimates on the training outlets beside the shipped model: "
        "the power record `biasamp validate` states a study's detectable change from",
    )
    args = ap.parse_args()
    model = leaning.LeaningModel.load("bundled")
    exclude = leaning.study_article_ids([ROOT / "configs" / "paper.yaml"])  # as `classifier train`'s default
    rng = np.random.default_rng(args.seed)
    print(
        f"shipped classifier, reading {args.read}; {args.articles} articles per generation, "
        f"{args.replicates} replicates per row; mean change (as a share of the true change)"
    )
    print(
        "| pool | decay | true change | raw share_right | beyond null | calibrated | calibrated error | "
        "calibrated CI covers | raw CI covers |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, pool in leaning.unseen_pools(ABP, exclude, model, MIN_WORDS).items():
        if args.pool and name not in args.pool:
            continue
        found = pd.DataFrame(
            [row for _ in range(args.replicates) for row in replicate(pool, model, rng, args.articles, args.read)]
        )
        if args.record and name == "training outlets":
            record(found, args)
        for (decay, _), f in found.groupby(["decay", "delta"], sort=False):
            t = f["truth"].mean()

            def share(col: str) -> str:
                m = f[col].mean()
                return f"{m:+.3f}" + (f" ({m / t:.0%})" if abs(t) > 0.01 else "")

            err = (f["share_right_calibrated"] - f["truth"]).mean()
            cal_cover, raw_cover = f["share_right_calibrated_covers"].mean(), f["share_right_covers"].mean()
            print(
                f"| {name} | {decay} | {t:+.3f} | {share('share_right')} | {share('share_right_beyond_null')} | "
                f"{share('share_right_calibrated')} | {err:+.3f} | {cal_cover:.0%} | {raw_cover:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
