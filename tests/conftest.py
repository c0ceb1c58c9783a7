import atexit
import fcntl
import gc
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_SILENT", "true")
# One OpenMP thread per process (torch's intra-op pool; the forkserver's children and the subprocesses
# inherit it): the suite runs 3 workers, their CLI children and Ray's workers on 2 cores, where each
# process's own pool of 2 spinning threads oversubscribed them (docs/benchmarks.md: the suite with and without).
os.environ.setdefault("OMP_NUM_THREADS", "1")


ROOT = Path(__file__).parents[1]


def pytest_collection_finish(session):
    """The test modules' imports (torch, transformers, pandas) are never garbage: frozen, the full
    collections that each in-process training runs (accelerate's) do not walk them again, as in a
    trajectory's Ray worker (biasamp.backends.ray_cluster)."""
    gc.freeze()


TIMEOUT = 900  # seconds a command may take before it counts as a hang


def cli(*args, env=None, cwd=ROOT, fresh=False):
    """`biasamp ARGS` in a child process of its own (its exit code, file descriptors 1 and 2, working
    folder and environment: this process's with `env` over it, a key set to None unset), forked from
    one that imported the command line once (multiprocessing's forkserver, the CLI preloaded), so that
    it starts in milliseconds rather than in the seconds of importing torch, transformers and pandas
    again. `fresh`: the
    `biasamp` console script in a new interpreter, where the interpreter itself is under test (what
    `import torch` leaves in the temp dir, for one)."""
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None: unset
    if fresh:
        cmd = [str(Path(sys.executable).parent / "biasamp"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=environ, timeout=TIMEOUT)
    with tempfile.TemporaryDirectory(prefix="biasamp-cli-") as logs:
        out, err = Path(logs) / "stdout", Path(logs) / "stderr"
        code = Path(logs) / "exit"
        proc = FORKS.Process(target=_forked_cli, args=(list(args), cwd, environ, out, err, code))
        proc.start()
        proc.join(TIMEOUT)
        if proc.exitcode is None:
            proc.kill()
            raise subprocess.TimeoutExpired(list(args), TIMEOUT)
        # The command's own exit code as it wrote it: under load the forkserver can lose a child's
        # status and report 255 (cpython#140867; one CI run of `make test`). A signal leaves no file.
        returncode = int(code.read_text()) if code.exists() else proc.exitcode
        return subprocess.CompletedProcess(list(args), returncode, out.read_text(), err.read_text())


def _forked_cli(args: list[str], cwd: Path, env: dict, stdout: Path, stderr: Path, exit_file: Path) -> None:
    """In the forked process: the command as `biasamp ARGS` runs it, its output on its own fds, its
    exit code (as the interpreter would compute it from SystemExit) in `exit_file`."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # read TMPDIR again
    for fd, path in ((1, stdout), (2, stderr)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["biasamp", *args]
    from biasamp.cli import cli as biasamp

    code = 1  # an exception other than SystemExit: a traceback and 1, as from the console script
    try:
        biasamp()
        code = 0
    except SystemExit as stop:
        code = 0 if stop.code is None else stop.code & 0xFF if isinstance(stop.code, int) else 1
        raise
    finally:
        atexit._run_exitfuncs()  # as an interpreter's exit would (multiprocessing's children skip them)
        exit_file.write_text(str(code))


FORKS = multiprocessing.get_context("forkserver")
# The stages that import torch, transformers and datasets too: each `run`, `score` or `classify` child
# would import them again (7 CPU-s). Not ray (its import reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, which
# biasamp sets per address first), nor wandb (its media folder, made once, would go with the first
# child's exit).
FORKS.set_forkserver_preload(
    [
        "biasamp.cli",
        "biasamp.study",
        "biasamp.stages.report",
        "biasamp.stages.train",
        "biasamp.stages.score",
        "biasamp.stages.generate",
        "biasamp.stages.analyze",  # scipy.stats and statsmodels: 0.6 s in each `analyze` or `simulate` child
        "biasamp.simulate",
    ]
)


SMOKE_KEY = "local-" + "0123456789abcdef" * 2 + "01234567"  # a W&B key in the environment


def built_once(tmp_path_factory, name: str, build) -> dict:
    """`build(folder)`'s JSON-able result, built once per test run however many pytest-xdist workers
    ask (`make test` runs several: the first builds it under a lock in the base temp folder they
    share, the others wait and read it), as xdist's docs advise for session fixtures."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder, result = shared / name, shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            folder.mkdir(exist_ok=True)  # (a worker whose build failed left it)
            result.write_text(json.dumps(build(folder)))
    return json.loads(result.read_text())


def folder_tree(folder: Path) -> dict[str, str]:
    """Every file under a folder with the hash of its bytes, and every folder (an empty one too)."""
    if not folder.is_dir():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
    }


def _completed(res: subprocess.CompletedProcess) -> dict:
    return {"args": list(res.args), "returncode": res.returncode, "stdout": res.stdout, "stderr": res.stderr}


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """`biasamp run configs/smoke.yaml` (W&B offline), then `analyze` and `report`, once per test run;
    tests read it and never change it. A system temp dir and a user cache of its own show what `run`
    leaves outside its folder (Ray's session folder stays in /tmp/ray, as docs/loop.md says)."""

    def build(base: Path) -> dict:
        # A long folder name: the scratch folder moves to TMPDIR past 51 characters (docs/loop.md), a path tested here.
        out, systmp, cache = base / "smoke-study-with-a-long-path-a", base / "systmp", base / "cache"
        systmp.mkdir()
        env = {"WANDB_API_KEY": SMOKE_KEY, "TMPDIR": str(systmp), "XDG_CACHE_HOME": str(cache), "RAY_TMPDIR": "/tmp"}
        run = cli("run", "configs/smoke.yaml", "--out", str(out), "--set", "wandb.mode=offline", env=env, fresh=True)
        assert run.returncode == 0, run.stdout + run.stderr
        analyze = cli("analyze", str(out))  # (the report's matplotlib keeps its font cache in the user's cache)
        report = cli("report", str(out), "--out", str(out / "report"))
        paths = {"out": str(out), "systmp": str(systmp), "cache": str(cache)}
        return {
            **paths,
            "env": env,
            **{k: _completed(r) for k, r in (("run", run), ("analyze", analyze), ("report", report))},
        }

    d = built_once(tmp_path_factory, "smoke", build)
    done = {k: subprocess.CompletedProcess(**d[k]) for k in ("run", "analyze", "report")}
    return SimpleNamespace(**{k: Path(d[k]) for k in ("out", "systmp", "cache")}, env=d["env"], **done)


# The smoke study's two original arms, for tests whose cost grows with every arm (Ray jobs, DeepSpeed).
TWO_ARMS = "arms={synthetic: {mix: replace}, preservation: {mix: preserve, real_fraction: 0.25}}"


def tiny_study(tmp_path, **over) -> dict:
    """A minimal study dict: tiny GPT-2, 6 bundled articles, short generations."""
    d = {
        "study": "t",
        "generations": 2,
        "seeds": [0],
        "model": {
            "kind": "tiny_gpt2",
            "tokenizer": "gpt2-bpe",
            "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 256},
        },
        "corpora": {"main": {"source": "bundled", "per_label": {"left": 2, "center": 2, "right": 2}}},
        "train": {"epochs": 1, "batch_size": 3, "lr": 1e-3, "max_length": 96},
        "arms": {"synthetic": {"mix": "replace"}},
        "generation": {"new_tokens": 8, "max_blocks": 1, "batch_size": 16},
        "scoring": {"classifier": {"kind": "tiny_random"}, "quality": {"kind": "tiny_random"}, "bootstrap": 50},
        "wandb": {"mode": "disabled"},
        "out_dir": str(tmp_path / "out"),
    }
    for key, value in over.items():
        d[key] = value
    return d


@pytest.fixture
def study_dict(tmp_path):
    return lambda **over: tiny_study(tmp_path, **over)


@pytest.fixture(scope="session")
def local_classifier(tmp_path_factory):
    """A 3-label sequence classifier saved to a local folder, as a hub download would be: the hub
    path, offline. Its labels are the authors' (LABEL_0 right, LABEL_1 left, LABEL_2 center)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from biasamp.config import ModelConfig
    from biasamp.models import load_tokenizer

    tok = load_tokenizer(ModelConfig(kind="tiny_gpt2", tokenizer="gpt2-bpe"))
    torch.manual_seed(1)
    model = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tok),
            n_layer=1,
            n_embd=16,
            n_head=2,
            num_labels=3,
            pad_token_id=tok.pad_token_id,
            initializer_range=0.5,
            id2label={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"},
        )
    )
    d = tmp_path_factory.mktemp("clf")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, or a skip where this machine cannot mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
        why = None if res.returncode == 0 else res.stderr.decode().strip() or "mount failed"
    except OSError as e:  # no mount command
        why = str(e)
    if why:
        pytest.skip(f"cannot mount a tmpfs here: {why}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])
