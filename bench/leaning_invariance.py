"""Recipes of the offline leaning classifier, measured for what a collapse study needs, each fitted in
the same run: macro-F1 on outlets never seen (`biasamp classifier eval`'s protocol: the training
pool, 5 outlet-grouped folds, F1 averaged over folds), and `biasamp classifier check` on the outlets
held out of the shipped model (fitted on the whole training pool, as `classifier train` does):
intact macro-F1 and the largest shift of a reading under the degradations. docs/measuring.md, "How good the
offline instruments are".

    python bench/leaning_invariance.py [whole_article ...]   # default: every recipe (~8 min each on a free core)
"""

import sys
import time
from pathlib import Path

import numpy as np

from biasamp.config import LABELS
from biasamp.corpus import read_source
from biasamp.instruments import invariance, leaning

ABP = Path("../shared/data/article-bias-prediction")
CHECK_PER_LABEL = 300  # as `biasamp classifier check`
# name: (words per window read, 0: the whole article; intercept)
RECIPES = {
    "whole_article": (0, True),  # the recipe before windows: whole articles, with an intercept
    "windows_128": (leaning.WINDOW, False),  # shipped
    "windows_256": (256, False),
    "windows_512": (512, False),
}


def main(names: list[str]) -> None:
    data = read_source(str(ABP))
    pool = leaning.training_pool(ABP, leaning.study_article_ids([Path("configs/paper.yaml")]))
    held = leaning.check_outlets(pool)
    pool = pool[~pool["outlet"].isin(held)].reset_index(drop=True)  # what `classifier train` fits on
    check = invariance.unseen_articles(data, set(pool["outlet"]), CHECK_PER_LABEL)
    folds = leaning.outlet_folds(pool)
    texts, y, outlets = leaning.texts_of(pool), pool["source_label"].to_numpy(), pool["outlet"].to_numpy()
    print(
        f"pool: {len(pool)} articles of {pool['outlet'].nunique()} outlets, {folds.max() + 1} outlet-grouped folds; "
        f"check: {len(check)} articles of {check['outlet'].nunique()} held-out outlets",
        flush=True,
    )
    rows = []
    for name in names:
        start = time.time()
        oof = np.zeros((len(pool), len(LABELS)))
        for k in range(folds.max() + 1):
            tr, te = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            oof[te] = leaning.fit([texts[i] for i in tr], y[tr], outlets[tr], *RECIPES[name]).probabilities(
                [texts[i] for i in te]
            )
        read = invariance.readings(leaning.fit(texts, y, outlets, *RECIPES[name]), check)
        table = invariance.shift_table(read, n_boot=500)
        worst = table.loc[table["shift"].abs().idxmax()]
        rows.append(
            {
                "recipe": name,
                "cv_f1": leaning.article_report(y, oof, folds)["macro_f1"],
                "check_f1": invariance.macro_f1(read["intact"], check["source_label"]),
                "shift": abs(worst["shift"]),
                "worst": f"{worst['reading']}, {worst['condition']}",
            }
        )
        print(f"{name}: {rows[-1]} [{time.time() - start:.0f} s]", flush=True)
        print(
            table.pivot(index="condition", columns="reading", values="shift").loc[list(read)].round(3).to_string(),
            flush=True,
        )
    print(
        "\n| recipe | macro-F1, 5 outlet folds | macro-F1, check outlets | largest shift under a degradation | where |"
        "\n|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['recipe']} | {r['cv_f1']:.3f} | {r['check_f1']:.3f} | {r['shift']:.3f} | {r['worst']} |")


if __name__ == "__main__":
    unknown = sorted(set(sys.argv[1:]) - set(RECIPES))
    if unknown:
        sys.exit(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")
    main(sys.argv[1:] or list(RECIPES))
