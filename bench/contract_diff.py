"""Is a refactor a move? Compares, between a git revision and the working tree, what existing study
folders depend on: every shipped config resolved (its full JSON and science hash: a changed hash
makes `biasamp run` refuse a folder), the scoring settings every scores file records (a change makes
summaries refuse to pool), and every declared table's columns, types and order.

    python bench/contract_diff.py REVISION        # e.g. the commit before a refactor

Prints one line per item and `identical` or `DIFFERENT`; exit status 1 when anything differs.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
PROBE = """
import hashlib, json, sys
from pathlib import Path
import biasamp.instruments  # the built-in measures, where the revision has them
from biasamp.config import load_config
from biasamp.stages.summarize import scoring_settings
from biasamp.tables import TABLES
out = {}
for c in sorted(Path("configs").glob("*.yaml")):
    cfg = load_config(c)
    out[f"config {c.name}"] = [cfg.science_hash(), hashlib.sha1(cfg.model_dump_json().encode()).hexdigest()[:12]]
    out[f"scoring settings {c.name}"] = scoring_settings(cfg.scoring)
for name, t in TABLES.items():
    out[f"table {name}"] = list(t.columns.items())
print(json.dumps(out))
"""


def contract(tree: Path) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    if res.returncode:
        raise SystemExit(f"{tree}: {res.stderr.strip().splitlines()[-1]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old_tree), sys.argv[1]], cwd=ROOT, check=True)
        try:
            old, new = contract(old_tree), contract(ROOT)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=True)
    keys, differ = sorted(set(old) | set(new)), 0
    for key in keys:
        same = old.get(key) == new.get(key)
        differ += not same
        digest = hashlib.sha1(json.dumps(new.get(key)).encode()).hexdigest()[:8]
        print(f"{key:45} {'identical' if same else 'DIFFERENT'} ({digest})")
    print(f"{len(keys) - differ}/{len(keys)} identical between {sys.argv[1]} and the working tree")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
