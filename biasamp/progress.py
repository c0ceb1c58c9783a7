"""Where a study stands, read from its folder alone (no Ray; from any machine that sees the storage,
while it runs or after it stopped): each trajectory's log (OUT/logs/{arm}__seed{seed}.log, one
timestamped line per stage and its traceback if it failed), the generations written, and whether a
process holds the folder's lock (artifacts.own_output_dir). `biasamp status` prints it; `biasamp run`
logs its one-line summary now and then.

The ETA: every unfinished generation costs the median wall time of the generations done so far,
trajectories run as many at once as run now, and one that waits starts when a running one ends.
"""

from __future__ import annotations

import fcntl
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table

from biasamp import artifacts
from biasamp.config import StudyConfig

# A trajectory log's line (biasamp.backends.ray_cluster writes them; seconds, then milliseconds since
# this version): "2026-12-03 15:41:53.120 [curation/seed1] G0/2: training on 12 articles (real 12)".
LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) \[(?P<arm>[^\]]+)/seed(?P<seed>\d+)\] "
    r"(?:G(?P<g>\d+)/\d+: )?(?P<says>.*)$"
)
# The first words of biasamp.stages.trajectory's stage lines -> the stage they begin.
STAGE_OF = (
    ("training", "train"),
    ("checkpoint", "train"),
    ("capturing", "capture"),
    ("writing", "generate"),
    ("loading the scoring", "score"),
    ("scoring", "score"),
    ("done in", "done"),
)
PROMPTS = re.compile(r"^(\d+)/(\d+) prompts")  # generate's once-a-minute progress line


@dataclass
class TrajectoryStatus:
    arm: str
    seed: int
    state: str  # done | running | failed | waiting (not begun) | stopped (begun, unfinished, nothing runs it)
    generations_done: int
    generation: int | None = None  # the one being written (or that failed)
    stage: str | None = None  # train | capture | generate | score, or the stage that failed
    detail: str = ""  # generate's "5/12 prompts"
    error: str = ""  # a failure's exception line
    log: str = ""
    since: float | None = None  # when its current generation began (epoch seconds)
    first: int | None = None  # the first generation its last attempt wrote
    spans: list[tuple[float, float]] = field(default_factory=list)  # each attempt's first and last line


@dataclass
class StudyStatus:
    study: str
    out: str
    state: str  # running | finished | failed | stopped | not started
    pid: int | None
    generations: int  # per trajectory
    generations_done: int  # over all trajectories
    generations_total: int
    median_generation_seconds: float | None
    median_stage_seconds: dict[str, float]
    eta: float | None  # epoch seconds when the study should end (running studies only)
    eta_seconds: float | None
    remaining_seconds: float | None  # trajectory time left at the median, however it is run
    as_of: float
    trajectories: list[TrajectoryStatus] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _stage(says: str) -> str | None:
    return next((stage for words, stage in STAGE_OF if says.startswith(words)), None)


def read_log(path: Path, as_of: float) -> list[tuple[float, int | None, str] | str]:
    """A log's lines up to `as_of`: (time, generation, message) for a stage line, the raw text for
    any other (a traceback's)."""
    rows: list = []
    if not path.is_file():
        return rows
    for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = LINE.match(text)
        if m is None:
            rows.append(text)
            continue
        at = _stamp(m["at"])
        if at > as_of:
            break
        rows.append((at, None if m["g"] is None else int(m["g"]), m["says"]))
    return rows


def _exception_line(lines: list[str]) -> str:
    """The last traceback's exception line: the first unindented line after its header."""
    starts = [i for i, text in enumerate(lines) if text.startswith("Traceback (most recent call last)")]
    if not starts:
        return ""
    return next((text for text in lines[starts[-1] + 1 :] if text and not text.startswith(" ")), "")


def _trajectory(arm: str, seed: int, rows: list, done: int) -> tuple[TrajectoryStatus, dict, dict]:
    """One trajectory's state from its last attempt (the lines since its last "on node" line), with
    the wall times of the generations it finished (the first of an attempt apart: it loads the model
    and the instruments) and of their stages."""
    t = TrajectoryStatus(arm, seed, "waiting", done)
    starts = [i for i, r in enumerate(rows) if isinstance(r, tuple) and r[2].startswith("on node")] or [0]
    attempt = rows[starts[-1] :]
    generation_seconds, stage_seconds = {"first": [], "later": []}, {}
    for run in (rows[a:b] for a, b in zip(starts, [*starts[1:], len(rows)])):
        lines = [r for r in run if isinstance(r, tuple)]
        if lines:
            t.spans.append((lines[0][0], lines[-1][0]))
        began, kind, stages = (lines[0][0] if lines else None), "first", {}
        lines = [r for r in lines if _stage(r[2]) is not None]  # not generate's progress lines
        for (at, g, says), after in zip(lines, [*lines[1:], None]):
            stage = _stage(says)
            if stage == "done":
                generation_seconds[kind].append(at - began)
                for name, seconds in stages.items():
                    stage_seconds.setdefault(name, []).append(seconds)
                began, kind, stages = at, "later", {}
            elif after is not None and after[1] == g:  # until the generation's next stage
                stages[stage] = stages.get(stage, 0.0) + after[0] - at
    t.first = next((r[1] for r in attempt if isinstance(r, tuple) and r[1] is not None), None)
    stage_lines = [r for r in attempt if isinstance(r, tuple) and r[1] is not None]
    if not stage_lines:
        return t, generation_seconds, stage_seconds
    began = next(r[0] for r in attempt if isinstance(r, tuple))  # the worker's start: the first generation's
    t.since = next((r[0] for r in reversed(stage_lines) if _stage(r[2]) == "done"), began)
    for at, g, says in stage_lines:
        if (stage := _stage(says)) is not None:
            t.generation, t.stage, t.detail = g, stage, ""
        elif m := PROMPTS.match(says):
            t.detail = f"{m[1]}/{m[2]} prompts"
    t.error = _exception_line([r for r in attempt if isinstance(r, str)])
    if t.stage == "done":  # between generations
        t.generation, t.stage = t.generation + 1, "train"
    return t, generation_seconds, stage_seconds


def lock_holder(out: Path) -> int | None:
    """The pid of the process that holds OUT/.lock, or None. (A shared lock taken and let go at once:
    a `run` starting in that instant would be told the folder is in use.)"""
    path = out / ".lock"
    try:
        fh = path.open("r")
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = fh.read().strip()
            return int(pid) if pid.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def study_status(cfg: StudyConfig, as_of: float | None = None) -> StudyStatus:
    """The study in `cfg.output_dir` now, or as its logs show it at `as_of` (epoch seconds: the same
    estimate, made back then, to check it against when the run ended)."""
    out = cfg.output_dir
    replay = as_of is not None
    now = as_of if replay else datetime.now().timestamp()
    pid = None if replay else lock_holder(out)
    running = replay or pid is not None
    trajectories, generation_seconds, stage_seconds = [], {"first": [], "later": []}, {}
    for arm in cfg.arms:
        for seed in cfg.seeds:
            log = out / "logs" / f"{arm}__seed{seed}.log"
            rows = read_log(log, now)
            if replay:
                done = len({r[1] for r in rows if isinstance(r, tuple) and _stage(r[2]) == "done"})
            else:
                done = artifacts.completed_generations(out, arm, seed)
            t, seconds, stages = _trajectory(arm, seed, rows, done)
            t.log = str(log) if log.exists() else ""
            if log.exists() and not log.is_file():  # where no line can be written, the trajectory fails
                t.error = f"its log {log} is not a file"
            for kind, values in seconds.items():
                generation_seconds[kind] += values
            for stage, values in stages.items():
                stage_seconds.setdefault(stage, []).extend(values)
            if done >= cfg.generations:
                t.state, t.generation, t.stage, t.detail, t.error = "done", None, None, "", ""
            elif t.error:
                t.state = "failed"
            elif t.stage is not None:
                t.state = "running" if running else "stopped"
            trajectories.append(t)
    every = generation_seconds["first"] + generation_seconds["later"]
    median = statistics.median(every) if every else None
    first = statistics.median(generation_seconds["first"] or every) if every else None
    later = statistics.median(generation_seconds["later"] or every) if every else None
    remaining = eta = None
    if median is not None:
        remaining = sum(_work(t, cfg.generations, first, later) for t in trajectories if t.state != "done")
        if running and not all(t.state in ("done", "failed") for t in trajectories):
            eta = now + _time_left(trajectories, cfg.generations, first, later, now)
    states = {t.state for t in trajectories}
    if states == {"done"}:
        state = "finished"
    elif running:
        state = "running"
    elif "failed" in states:
        state = "failed"
    elif states == {"waiting"}:
        state = "not started"
    else:
        state = "stopped"
    return StudyStatus(
        study=cfg.study,
        out=str(out),
        state=state,
        pid=pid,
        generations=cfg.generations,
        generations_done=sum(t.generations_done for t in trajectories),
        generations_total=cfg.generations * len(trajectories),
        median_generation_seconds=median,
        median_stage_seconds={s: statistics.median(v) for s, v in stage_seconds.items()},
        eta=eta,
        eta_seconds=None if eta is None else eta - now,
        remaining_seconds=remaining,
        as_of=now,
        trajectories=trajectories,
    )


def _work(t: TrajectoryStatus, generations: int, first: float, later: float) -> float:
    """Seconds of generations a trajectory has left, at the medians, from the start of its current
    generation (a trajectory that waits or stopped begins an attempt: its first generation costs
    `first`)."""
    left = generations - t.generations_done
    if left <= 0:
        return 0.0
    begins = t.state != "running" or t.generation == t.first
    return (first if begins else later) + (left - 1) * later


def _time_left(trajectories: list[TrajectoryStatus], generations: int, first: float, later: float, now: float) -> float:
    """Seconds until the last trajectory ends: each running one finishes its generations at the
    medians (less what its current generation has run), as many run at once as run now, and each
    waiting one takes the first free place."""
    places = []
    for t in trajectories:
        if t.state == "running":
            places.append(max(_work(t, generations, first, later) - (now - (t.since or now)), 0.0))
    waiting = [_work(t, generations, first, later) for t in trajectories if t.state in ("waiting", "stopped")]
    # As many at once as ever ran together: at a wave's end fewer run than the cluster holds.
    places += [0.0] * max(_most_at_once(trajectories, now) - len(places), 0 if places else 1)
    for work in waiting:
        i = places.index(min(places))
        places[i] += work
    return max(places)


def _most_at_once(trajectories: list[TrajectoryStatus], now: float) -> int:
    """The most attempts whose spans overlapped (a running one's reaches `now`)."""
    events = []
    for t in trajectories:
        for i, (start, end) in enumerate(t.spans):
            running = t.state == "running" and i == len(t.spans) - 1
            events += [(start, 1), (now if running else end, -1)]
    most = level = 0
    for _, step in sorted(events):  # an end before a start at the same instant
        level += step
        most = max(most, level)
    return most


def summary_line(s: StudyStatus) -> str:
    """One line: what is done, running, failed, and when it should end."""
    count = {state: sum(t.state == state for t in s.trajectories) for state in ("done", "running", "failed")}
    line = (
        f"{s.generations_done}/{s.generations_total} generations; trajectories {count['done']} done, "
        f"{count['running']} running, {count['failed']} failed, "
        f"{len(s.trajectories) - sum(count.values())} waiting"
    )
    if s.eta_seconds is not None:
        line += f"; ETA {datetime.fromtimestamp(s.eta):%H:%M:%S} (in {duration(s.eta_seconds)})"
    return line


def live_view(s: StudyStatus) -> Group:
    """What `biasamp run` keeps at the foot of a terminal: a line per running or failed trajectory (its
    generation, stage and what the stage has done) and a bar of the generations written, with the
    summary line and its ETA. Waiting and finished trajectories are counted there, not listed, so that
    the view stays a few lines high at hundreds of trajectories."""
    rows = Table.grid(padding=(0, 2))
    for t in s.trajectories:
        if t.state in ("running", "failed"):
            g = f"G{t.generation}/{s.generations - 1}" if t.generation is not None else "-"
            what = f"failed: {t.error}" if t.state == "failed" else t.detail or "running"
            rows.add_row(f"{t.arm}/seed{t.seed}", g, t.stage or "-", what)
    foot = Table.grid(padding=(0, 1))
    bar = ProgressBar(total=max(s.generations_total, 1), completed=s.generations_done, width=30)
    foot.add_row(bar, summary_line(s))
    return Group(rows, foot)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
