"""Config fuzz: every key of a study config (every depth), each set to values no study means (negative,
zero, huge, non-finite, null, empty, the wrong type, odd paths) and to structures (deep nesting,
aliases, merge keys, keys that are not names, YAML's tags), one at a time, through what `biasamp
validate` runs (the config, then every check of the world before Ray); then whole config files of a
wrong structure. Each must end in a user error whose one line names the key or a file; a traceback
(any other exception) or a line naming neither is printed. In-process (tests/test_bad_input.py runs
the real command on chosen cases).

    python bench/config_fuzz.py [configs/smoke.yaml]

Prints the counts; exit status 1 when any case gave a traceback or a line naming no key or file.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from biasamp.cli import _load, _user_error
from biasamp.config import load_config
from biasamp.study import check_before_run

VALUES = [
    "-1", "0", "1", "0.5", ".inf", ".nan", "null", "[]", "{}", "x", "true", str(10**30), "[1, 2]", '""',
    "-0.0001", "99999999", "{a: 1}", "[x]", "/dev/zero", "/", "../..", "é", "'{study}'", "1.0e+20", "2147483648",
]  # fmt: skip
# Structure, not values: nesting deep, aliases, keys that are not names, YAML's other types and tags.
LAUGHS = "[" + ", ".join(f"&a{i} [" + ", ".join([f"*a{i - 1}" if i else "x"] * 9) + "]" for i in range(9)) + "]"
STRUCTURES = [
    "[" * 40 + "]" * 40, "{a: " * 40 + "1" + "}" * 40, LAUGHS, "&a [*a]", "[&a [1], *a, *a]",
    "{<<: {a: 1}}", "{<<: [{a: 1}, {b: 2}]}", "{[a]: 1}", "{{a: 1}: 2}", "{null: 1}", "{1: 2}", "{true: 1}",
    "!!set {a, b}", "!!binary aGVsbG8=", "2020-01-01", "2020-01-01T00:00:00Z", "!!python/object:os.system ls",
    "!custom 1", "0x1F", "0o17", "1_000", "~",
]  # fmt: skip
# Big ones, a second each for PyYAML's scanner: on the top-level keys only.
BIG = ["[" * 2000 + "]" * 2000, "'" + "x" * 100_000 + "'", "[" + "1, " * 10_000 + "1]"]
# Whole config files whose structure is wrong: each written to a file and loaded as a config.
FILES = {
    "top-level list": "- study: x\n",
    "top-level scalar": "42\n",
    "nested aliases": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    + "study: *i\n",
    "alias inside itself": "study: &s [*s]\n",
    "merge of a list": "<<: [1, 2]\nstudy: x\n",
    "deep mapping": "study: x\ntrain: " + "{a: " * 200 + "1" + "}" * 200 + "\n",
    "duplicate key": "study: x\nstudy: y\n",
    "list as key": "? [a, b]\n: 1\n",
    "tab indent": "study: x\ntrain:\n\tlr: 1\n",
    "two documents": "study: x\n---\nstudy: y\n",
    "binary": "\x00\x01\x02",
    "not UTF-8": "study: \xff\xfe\n",
}


def _keys(d: dict, prefix: str = ""):
    for k, v in d.items():
        yield prefix + k
        if isinstance(v, dict) and v:
            yield from _keys(v, f"{prefix}{k}.")


def main() -> int:
    config = Path(sys.argv[1] if len(sys.argv) > 1 else "configs/smoke.yaml")
    out = Path(tempfile.mkdtemp(prefix="biasamp-fuzz-")) / "out"  # never created: the checks run before writing
    keys = list(_keys(load_config(config).model_dump(mode="json")))
    counts, traces, unnamed = {"accepted": 0, "refused": 0}, [], []

    def attempt(case: str, config: Path, overrides: list[str], names: list[str]) -> None:
        """One case; `names`: what its line must name (a key's parts), or else a file."""
        try:
            check_before_run(_load(config, overrides, out))
            counts["accepted"] += 1
            return
        except (ValueError, OSError, RecursionError) as e:
            line = None if isinstance(e, RecursionError) else _user_error(e)
            if line is None or "\n" in line or len(line) > 1000:  # a traceback, or a line no one reads
                traces.append(f"{case}: {type(e).__name__}: {str(e)[:200]}")
                return
        except Exception as e:  # a traceback for the user
            traces.append(f"{case}: {type(e).__name__}: {str(e)[:200]}")
            return
        counts["refused"] += 1
        said = line if not overrides else line.removeprefix(f"{config}: ")  # an override's: its file is no name
        if not any("/" in word for word in said.split()) and not any(n in said for n in names):
            unnamed.append(f"{case}: {line}")

    cases = [(key, value) for key in keys for value in VALUES + STRUCTURES]
    cases += [(key, value) for key in keys if "." not in key for value in BIG]
    for key, value in cases:
        attempt(f"{key}={value[:60]}", config, [f"{key}={value}"], key.split("."))
    for name, text in FILES.items():
        path = out.parent / "config.yaml"
        path.write_bytes(text.encode("latin-1"))
        attempt(f"a config file: {name}", path, [], [f"{path}: "])  # the file, first
        path.unlink()
    out.parent.rmdir()
    for line in traces + unnamed:
        print(line[:300])
    print(
        f"{len(cases) + len(FILES)} cases on {config}: {len(keys)} keys x ({len(VALUES)} values + {len(STRUCTURES)} "
        f"structures), {len(BIG)} big structures on each top-level key, {len(FILES)} config files of a wrong "
        f"structure: {counts['accepted']} accepted, {counts['refused']} refused; tracebacks or lines past 1,000 "
        f"characters: {len(traces)}; one line "
        f"naming no key or file: {len(unnamed)}"
    )
    return 1 if traces or unnamed else 0


if __name__ == "__main__":
    sys.exit(main())
