"""Chaos test: SIGKILL a smoke study's whole process group at targeted and random points, resume it,
and compare everything it wrote with an uninterrupted run. Further trials stop the driver alone with
SIGTERM (what schedulers and `ray job stop` send) or SIGINT (Ctrl-C), which must end it with one line
and exit 143 / 130; interrupt an extension (a finished 2-generation study run again to 3) after its
last trajectory; and fill the disk (the study on a tmpfs too small for it, then grown: skipped where
the machine cannot mount one), which must end with each failed trajectory in one line naming its file.

Each trial starts `biasamp run` in a process session of its own, watches its output folder and log,
kills the session (driver, Ray and every worker) the moment its kill point is reached, then runs
`biasamp run` again to the end. It reports, per trial, whether every table (time columns aside)
and every checkpoint's weights equal the reference run's, how many of the trial's Ray processes
outlived the kill by 30 s (and which), and what was left in the system temp dir, the W&B cache or as temp files in
the study folder.

    python bench/chaos.py [--random 10] [--points all|after_last_trajectory,...] [--seed 0]
                          [--stops all|none|sigterm_training,...] [--nodes all|none|node_training,...] [--repeats 1]

`--nodes` runs the study on a multi-node Ray on this machine and SIGKILLs a worker node mid-study
(NODE_KILLS): the same run must finish, with the reference run's tables and weights, and nothing of
the killed node or of the study may be left 30 s later.

Prints `k/N identical`; exit status 1 when any trial differs or leaves orphans or debris.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parents[1]
STUDY = [str(ROOT / "configs" / "smoke.yaml"), "--set", "seeds=[0]"]  # 4 arms x 1 seed x 3 generations

# Where to kill: a line in the run's output, or a file (glob under OUT) appearing.
POINTS = {
    "ray_started": ("log", "Ray at "),
    "manifest_written": ("file", "manifest.json"),
    "corpus_written": ("file", "corpus/main.parquet"),
    "training": ("log", "training on"),
    "checkpoint_being_written": ("file", "checkpoints/*/seed0/.gen*.tmp"),
    "train_tables_written": ("file", "train_metrics/*.parquet"),
    "capturing_neurons": ("log", "capturing neurons"),
    "neurons_written": ("file", "neurons/*.parquet"),
    "generating": ("log", "writing "),
    "scoring": ("log", "scoring "),
    "scores_written": ("file", "scores/*.parquet"),
    "articles_written": ("file", "articles/*gen0.parquet"),
    "second_generation": ("file", "articles/*gen1.parquet"),
    "after_last_trajectory": ("log", "finished (4/4"),
    "summary_written": ("file", "summary.parquet"),
}


# Trials beyond a SIGKILL at a point: (point or None to run until it ends, signal to the driver alone,
# generations the study first finished, tmpfs size in MB for the study folder).
STOPS = {
    "sigterm_training": (POINTS["training"], signal.SIGTERM, None, None),
    "sigterm_generating": (POINTS["generating"], signal.SIGTERM, None, None),
    "sigint_scoring": (POINTS["scoring"], signal.SIGINT, None, None),
    "extension_after_last_trajectory": (POINTS["after_last_trajectory"], signal.SIGKILL, 2, None),
    "extension_sigint_after_last_trajectory": (POINTS["after_last_trajectory"], signal.SIGINT, 2, None),
    "disk_full": (None, None, None, 60),
}


# Node kills on a real multi-node Ray (`ray.cluster_utils.Cluster`: a 0-CPU head, as the shipped cluster
# files have it, and 1-CPU worker nodes on loopback): the first worker is SIGKILLed when a trajectory
# on it prints the line, and the same `biasamp run` must finish. In `node_shared_actors` the second
# worker joins only once the run has connected, so the first was alone when the driver made its
# progress queue: Ray put the queue there until it was pinned to the driver's node (the study exited 1).
NODE_KILLS = {
    "node_training": ("G1/2: training", False),
    "node_generating": ("G1/2: writing", False),
    "node_shared_actors": ("G1/2: training", True),
}


def _env(sandbox: Path) -> dict[str, str]:
    """A temp dir, user cache and Ray folder of the trial's own, to see what it leaves behind. Ray's
    is a short link in /tmp to sandbox/ray: its socket paths must stay under 107 bytes."""
    for d in ("tmp", "cache", "ray"):
        (sandbox / d).mkdir(parents=True, exist_ok=True)
    if not (sandbox / "ray-link").exists():
        link = Path(tempfile.mkdtemp(prefix="bcr", dir="/tmp"))
        link.rmdir()
        link.symlink_to(sandbox / "ray")
        (sandbox / "ray-link").write_text(str(link))
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TMPDIR": str(sandbox / "tmp"),
        "XDG_CACHE_HOME": str(sandbox / "cache"),
        "RAY_TMPDIR": (sandbox / "ray-link").read_text(),
        "PYTHONUNBUFFERED": "1",
    }


def _start(out: Path, sandbox: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "biasamp.cli", "run", *STUDY, "--out", str(out), *extra],
        cwd=ROOT,
        env=_env(sandbox),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _reached(point, out: Path, log: Path) -> bool:
    kind, what = point
    if kind == "log":
        return log.exists() and what in log.read_text(errors="replace")
    return bool(glob.glob(str(out / what)))


def _ray_processes(sandbox: Path) -> list[int]:
    """Live processes whose command line names the trial's Ray folder."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (sandbox / "ray-link").read_text().encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _name(pid: int) -> str:
    """A process's program and first argument, e.g. `python default_worker.py`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(Path(a.decode(errors="replace")).name for a in argv[:2] if a)


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    frames = {}
    for name in (
        "corpus",
        "articles",
        "scores",
        "training",
        "train_metrics",
        "neurons",
        "summary.parquet",
        "summary_arms.parquet",
    ):
        path = out / name
        if path.exists():
            df = pd.read_parquet(path)
            df = df.drop(columns=[c for c in df.columns if c.endswith("seconds")])  # wall times differ
            frames[name] = df.sort_values(list(df.columns[:6])).reset_index(drop=True)
    return frames


def _weights(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("checkpoints/*/*/*/model.safetensors"))}


def _mount_tmpfs(folder: Path, mb: int) -> str | None:
    """A tmpfs of `mb` MB at folder; None when mounted, else why not."""
    folder.mkdir(parents=True)
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)], capture_output=True)
    except OSError as e:  # no mount command
        return str(e)
    return None if res.returncode == 0 else (res.stderr.decode().strip() or "mount failed")


def trial(name: str, point, work: Path, reference: Path, sig=signal.SIGKILL, first=None, tmpfs_mb=None) -> dict:
    out, sandbox, log = work / name / "out", work / name / "sandbox", work / name / "run.log"
    sandbox.mkdir(parents=True)
    if tmpfs_mb and (why := _mount_tmpfs(out.parent / "disk", tmpfs_mb)):
        return {"trial": name, "killed": False, "skipped": f"cannot mount a tmpfs: {why}"}
    if tmpfs_mb:
        out = out.parent / "disk" / "out"
    if first:  # the study as it was before this extension: finished at `first` generations
        subprocess.run(
            [sys.executable, "-m", "biasamp.cli", "run", *STUDY, "--out", str(out), "--set", f"generations={first}"],
            cwd=ROOT,
            env=_env(sandbox),
            capture_output=True,
            check=True,
        )
    proc = _start(out, sandbox, log)
    t0, reached = time.time(), False
    while proc.poll() is None:
        due = point is not None and (time.time() - t0 >= point[1] if point[0] == "time" else _reached(point, out, log))
        if due:
            # SIGKILL: the whole session (driver, Ray, workers); SIGTERM / SIGINT: the driver alone, as a scheduler does
            os.killpg(proc.pid, sig) if sig == signal.SIGKILL else os.kill(proc.pid, sig)
            reached = True
            break
        time.sleep(0.02)
    rc = proc.wait(timeout=300)
    killed_at = time.time() - t0
    last_line = log.read_text(errors="replace").strip().splitlines()[-1] if log.read_text().strip() else ""
    if sig in (signal.SIGTERM, signal.SIGINT):  # one line, its exit status
        stopped_right = rc == 128 + sig and last_line.startswith(f"stopped by {signal.Signals(sig).name}")
    elif tmpfs_mb:  # the disk filled: each failed trajectory in one line naming its file, exit 1; then the
        # disk grows and the run resumes
        reached = rc == 1 and "no space left on device" in last_line
        stopped_right = reached
        subprocess.run(["mount", "-o", "remount,size=4g", str(out.parent)], check=True)
    else:
        stopped_right = True
    deadline = time.time() + 30  # Ray's processes that lose their parent exit on their own; give them 30 s
    while (orphans := _ray_processes(sandbox)) and time.time() < deadline:
        time.sleep(1)
    orphan_names = sorted({_name(pid) for pid in orphans})
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    resume = subprocess.run(
        [sys.executable, "-m", "biasamp.cli", "run", *STUDY, "--out", str(out)],
        cwd=ROOT,
        env=_env(sandbox),
        capture_output=True,
        text=True,
        timeout=900,  # a smoke study takes about 2 min here: a stall, not a slow run
    )
    ref, got = _tables(reference), _tables(out)
    same = resume.returncode == 0 and ref.keys() == got.keys() and _weights(reference).keys() == _weights(out).keys()
    if same:
        same = all(ref[k].equals(got[k]) for k in ref) and _weights(reference) == _weights(out)
    debris = [str(p.relative_to(sandbox)) for d in ("tmp", "cache") for p in (sandbox / d).rglob("*")]
    debris += [str(p.relative_to(out)) for p in out.rglob(".*.tmp")] + [".scratch"] * (out / ".scratch").exists()
    if tmpfs_mb:
        subprocess.run(["umount", "-l", str(out.parent)])
    return {
        "trial": name,
        "killed": reached,
        "at_s": round(killed_at, 1),
        "rc": rc,
        "one_line": stopped_right,
        "said": repr(last_line[:100]) if sig != signal.SIGKILL or tmpfs_mb else "",
        "identical": same,
        "orphans": len(orphans),
        "orphan_names": ",".join(orphan_names),
        "debris": len(debris),
        "debris_example": debris[0] if debris else "",
        "resume_rc": resume.returncode,
    }


def _node_processes(node) -> list:
    """A Ray node's processes: those Ray started for it and theirs (its raylet's workers)."""
    import psutil

    procs = []
    for infos in node.all_processes.values():
        for info in infos:
            try:
                p = psutil.Process(info.process.pid)
                procs += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
    return procs


def _title(p) -> str:
    """A process's command line; what Ray names a worker: ray::IDLE, or ray::TASK while it runs one."""
    try:
        return " ".join(p.cmdline())
    except Exception:  # psutil.Error: gone
        return ""


def _runs_a_task(title: str) -> bool:
    """A Ray worker running a task or actor (`ray::_trajectory_task`, `ray::Queue`), not an idle one
    or a node's own agents."""
    return title.startswith("ray::") and title.split()[0][5:] not in ("IDLE", "DashboardAgent", "RuntimeEnvAgent")


def _still_running(procs: list, within: float) -> list:
    """Those of `procs` still running after up to `within` seconds."""
    import psutil

    def running(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.time() + within
    while (alive := [p for p in procs if running(p)]) and time.time() < deadline:
        time.sleep(1)
    return alive


# What of a finished study is still on the cluster: placement groups not removed, actors not dead.
_LEFT_ON_CLUSTER = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
from ray._private.state import actors
print(*[f"group:{g['name']}" for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"],
      *[f"actor:{a['ActorClassName']}" for a in actors().values() if a["State"] != "DEAD"])
"""


def node_trial(name: str, work: Path, reference: Path) -> dict:
    """The study on a fresh multi-node Ray; the first worker node SIGKILLed at NODE_KILLS[name]."""
    from ray.cluster_utils import Cluster

    kill_at, joins_late = NODE_KILLS[name]
    out, sandbox, log = work / name / "out", work / name / "sandbox", work / name / "run.log"
    sandbox.mkdir(parents=True)
    # The cluster's processes and the run's on loopback (otherwise Ray resolves 127.0.0.1 to the
    # machine's outward address), under the trial's Ray folder.
    env = {**_env(sandbox), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    os.environ.update(RAY_TMPDIR=env["RAY_TMPDIR"], RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    head = {"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False}  # the GCS answers the checks
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        first = c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        others = [] if joins_late else [c.add_node(num_cpus=1, node_ip_address="127.0.0.1")]
        c.wait_for_nodes()
        proc = subprocess.Popen(
            [sys.executable, "-m", "biasamp.cli", "run", *STUDY, "--out", str(out)]
            + ["--set", f"resources.ray_address={c.address}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        t0, killed_at, killed, on_first = time.time(), None, [], set()
        with log.open("w") as fh:
            for line in proc.stdout:
                fh.write(line)
                if joins_late and not others and "Ray at " in line:  # connected, its queue placed: a second node
                    others.append(c.add_node(num_cpus=1, node_ip_address="127.0.0.1"))
                if m := re.search(r"\[(\S+)\] on node (\w+)", line):  # each trajectory names its node as it starts
                    (on_first.add if first.node_id.startswith(m[2]) else on_first.discard)(m[1])
                tag = re.match(r"\s*\d+s \[(\S+)\]", line)
                if kill_at in line and killed_at is None and tag and tag[1] in on_first:
                    killed, killed_at = _node_processes(first), time.time() - t0
                    c.remove_node(first, allow_graceful=False)  # SIGKILL to the node's processes
        rc = proc.wait(timeout=300)
        # Nothing left 30 s after the run: no process of the killed node, no worker of the living
        # ones still running a task, no placement group or actor of the study on the cluster.
        busy = [p for n in [c.head_node, *others] for p in _node_processes(n) if _runs_a_task(_title(p))]
        orphans = [_title(p)[:60] or str(p.pid) for p in _still_running(killed + busy, 30)]
        left = subprocess.run(
            [sys.executable, "-c", _LEFT_ON_CLUSTER, c.address], env=env, capture_output=True, text=True
        )
        orphans += left.stdout.split() if left.returncode == 0 else [f"state query failed: {left.stderr[-200:]}"]
    finally:
        c.shutdown()
    text = log.read_text(errors="replace")
    ref, got = _tables(reference), _tables(out)
    same = rc == 0 and ref.keys() == got.keys() and all(ref[k].equals(got[k]) for k in ref)
    same = same and _weights(reference) == _weights(out)
    debris = [str(p.relative_to(sandbox)) for d in ("tmp", "cache") for p in (sandbox / d).rglob("*")]
    debris += [str(p.relative_to(out)) for p in out.rglob(".*.tmp")] + [".scratch"] * (out / ".scratch").exists()
    return {
        "trial": name,
        "killed": killed_at is not None,
        "at_s": round(killed_at or 0, 1),
        "rc": rc,
        "one_line": rc == 0,  # no stop to report: the same run goes on and must end 0
        "said": "",
        "identical": same,
        "retried": "resuming after G0" in text,
        "orphans": len(orphans),
        "orphan_names": ",".join(sorted(set(orphans))),
        "debris": len(debris),
        "debris_example": debris[0] if debris else "",
        "resume_rc": "",  # no rerun: the run that lost a node finished by itself
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--random", type=int, default=10, help="Kills at random times within the reference run's duration.")
    ap.add_argument("--points", default="all", help="Targeted points, comma-separated, or 'all' / 'none'.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stops", default="all", help="Trials of STOPS, comma-separated, or 'all' / 'none'.")
    ap.add_argument("--nodes", default="none", help="Trials of NODE_KILLS, comma-separated, or 'all' / 'none'.")
    ap.add_argument("--repeats", type=int, default=1, help="How many times each node kill runs.")
    ap.add_argument("--work", type=Path, default=None, help="Folder for the runs (default: a temp folder, removed).")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="biasamp-chaos-", dir="/tmp"))
    names = list(POINTS) if args.points == "all" else [] if args.points == "none" else args.points.split(",")
    try:
        reference, sandbox = work / "reference" / "out", work / "reference" / "sandbox"
        sandbox.mkdir(parents=True)
        t0 = time.time()
        ref = subprocess.run(
            [sys.executable, "-m", "biasamp.cli", "run", *STUDY, "--out", str(reference)],
            cwd=ROOT,
            env=_env(sandbox),
            capture_output=True,
            text=True,
            timeout=900,  # a smoke study takes about 2 min here: a stall, not a slow run
        )
        duration = time.time() - t0
        if ref.returncode != 0:
            print(ref.stdout[-2000:], ref.stderr[-2000:])
            return 1
        print(f"reference run: {duration:.0f} s")
        rng = random.Random(args.seed)
        plan = [(n, POINTS[n]) for n in names] + [
            (f"random_{i}", ("time", round(rng.uniform(0, duration), 1))) for i in range(args.random)
        ]
        stops = list(STOPS) if args.stops == "all" else [] if args.stops == "none" else args.stops.split(",")
        rows = []
        for name, point in plan:
            rows.append(trial(name, point, work, reference))
            print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
        for name in stops:
            point, sig, first, tmpfs_mb = STOPS[name]
            rows.append(trial(name, point, work, reference, sig or signal.SIGKILL, first, tmpfs_mb))
            print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
        nodes = list(NODE_KILLS) if args.nodes == "all" else [] if args.nodes == "none" else args.nodes.split(",")
        for i in range(args.repeats):
            for name in nodes:
                rows.append(node_trial(name, work / f"repeat{i}", reference))
                print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
        table = pd.DataFrame(rows).reindex(columns=[*dict.fromkeys(k for r in rows for k in r), "skipped"])
        killed = table[table["killed"] == True]  # noqa: E712 (NaN for skipped trials)
        for _, row in table[table["skipped"].notna()].iterrows():
            print(f"skipped {row['trial']}: {row['skipped']}")
        print(
            f"\n{int(killed['identical'].sum())}/{len(killed)} identical after a kill or stop and a resume "
            f"({len(table) - len(killed)} trials ended before their kill point or were skipped); stops ending in "
            f"one line with their exit status: {int(killed['one_line'].sum())}/{len(killed)}; orphaned Ray processes: "
            f"{int(killed['orphans'].sum())}; trials leaving debris: {int((killed['debris'] > 0).sum())}"
        )
        if nodes:
            ran = killed[killed["trial"].isin(nodes)]
            print(
                f"worker nodes killed: {len(ran)}; the same run finished identical: {int(ran['identical'].sum())}/"
                f"{len(ran)}; the killed trajectory retried and resumed: {int(ran['retried'].sum())}/{len(ran)}"
            )
        bad = (~killed["identical"]).any() or (~killed["one_line"]).any() or killed["orphans"].sum()
        unkilled = table[table["trial"].isin(nodes) & (table["killed"] != True)]  # noqa: E712
        bad = bad or len(unkilled)  # a node trial that never reached its kill point proves nothing
        return 1 if bad or (killed["debris"] > 0).any() else 0
    finally:
        for link in work.glob("*/sandbox/ray-link"):
            Path(link.read_text()).unlink(missing_ok=True)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
