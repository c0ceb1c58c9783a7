"""Config fuzz: every key of a study config (every depth), each set to values no study means (negative,
zero, huge, non-finite, null, empty, the wrong type, odd paths), one at a time, through what `biasamp
validate` runs (the config, then every check of the world before Ray). Each must end in a user error
whose one line names the key or a file; a traceback (any other exception) or a line naming neither is
printed. In-process: thousands of cases in a minute or two (tests/test_bad_input.py runs the real
command on a chosen 141).

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


def _keys(d: dict, prefix: str = ""):
    for k, v in d.items():
        yield prefix + k
        if isinstance(v, dict) and v:
            yield from _keys(v, f"{prefix}{k}.")


def main() -> int:
    config = Path(sys.argv[1] if len(sys.argv) > 1 else "configs/smoke.yaml")
    out = Path(tempfile.mkdtemp(prefix="biasamp-fuzz-")) / "out"  # never created: the checks run before writing
    keys = list(_keys(load_config(config).model_dump(mode="json")))
    tried, accepted, traces, unnamed = 0, 0, [], []
    for key in keys:
        for value in VALUES:
            tried += 1
            try:
                check_before_run(_load(config, [f"{key}={value}"], out))
                accepted += 1
            except (ValueError, OSError) as e:
                line = _user_error(e)
                if line is None or "\n" in line:
                    traces.append(f"{key}={value}: {type(e).__name__}: {e}")
                    continue
                said = line.removeprefix(f"{config}: ")  # every config error starts with its file: not a name
                names_file = any("/" in word for word in said.split())
                if not names_file and not any(part in said for part in key.split(".")):
                    unnamed.append(f"{key}={value}: {line}")
            except Exception as e:  # a traceback for the user
                traces.append(f"{key}={value}: {type(e).__name__}: {str(e)[:200]}")
    out.parent.rmdir()
    for line in traces + unnamed:
        print(line[:300])
    print(
        f"{tried} one-key overrides of {config} ({len(keys)} keys x {len(VALUES)} values): {accepted} accepted, "
        f"{tried - accepted} refused; tracebacks: {len(traces)}; one line naming no key or file: {len(unnamed)}"
    )
    return 1 if traces or unnamed else 0


if __name__ == "__main__":
    sys.exit(main())
