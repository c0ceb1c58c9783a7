"""`biasamp` command line."""

from __future__ import annotations

import errno
import functools
import os
import re
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from biasamp.config import ClassifierConfig, CorpusConfig, StudyConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Bias-amplification studies of self-consuming LMs.")
data_app = typer.Typer(no_args_is_help=True, help="Study corpora.")
app.add_typer(data_app, name="data")
classifier_app = typer.Typer(
    no_args_is_help=True, help="The offline leaning classifier (TF-IDF + logistic regression) and its calibration."
)
app.add_typer(classifier_app, name="classifier")
quality_app = typer.Typer(no_args_is_help=True, help="The offline text-quality proxy (levels 0-3).")
app.add_typer(quality_app, name="quality")


def _user_error(e: Exception) -> str | None:
    """The one line for bad input in any command (a config, a file, a value, a path we cannot write, a
    full disk; pydantic's errors are ValueErrors too). An OSError is the user's when it names a file,
    is biasamp's own message (no errno) or is a full disk; None: a programming error, whose traceback stays.
    A value it quotes is cut to its first 200 characters (a 100 KB `--set` value is not echoed)."""
    line = _error_line(e)
    return None if line is None else LONG_WORD.sub(lambda m: f"{m[0][:200]}... ({len(m[0])} characters)", line)


LONG_WORD = re.compile(r"\S{240,}")


def _error_line(e: Exception) -> str | None:
    if isinstance(e, ValueError):
        return "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    if isinstance(e, RuntimeError):  # pathlib's resolve() on links that point at each other
        if not str(e).startswith("Symlink loop from "):
            return None
        path = str(e).removeprefix("Symlink loop from ").strip("'")
        return f"{path}: a symlink loop"
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and e.filename is None:  # a library's write, not files.atomic
        return f"no space left on device ({e})"
    if e.filename is None and e.errno is not None:
        return None
    return str(e) if e.filename is None else f"{e.filename}: {e.strerror}"


def _version(value: bool):
    if value:
        from importlib.metadata import version

        typer.echo(f"biasamp {version('biasamp')}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")):
    """Bias-amplification studies of self-consuming LMs."""
    if not sys.stderr.isatty():  # a log, a pipe, CI: no model loader's bars between the command's own lines
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by transformers and the hub at import
        if "transformers" in sys.modules:  # imported already (a process forked after importing it)
            sys.modules["transformers"].utils.logging.disable_progress_bar()


SET_HELP = "Override a config key, e.g. --set train.epochs=2 (repeatable)."


def _load(config: Path, overrides: list[str], out: Optional[Path] = None) -> StudyConfig:
    """A config file's study, into `out` or its out_dir; or a study folder's, as its manifest records it."""
    from biasamp.config import updated

    if (config / "manifest.json").is_file():
        from biasamp.study import study_config

        if out is not None and out.resolve() != config.resolve():
            raise typer.BadParameter("a study folder's study runs into that folder", param_hint="--out")
        return study_config(config, overrides)
    cfg = load_config(config, overrides)
    # Absolute, so that Ray workers started elsewhere write to the same place.
    return updated(cfg, {"out_dir": str((out if out is not None else cfg.output_dir).resolve())})


@app.command()
def validate(
    config: Path,
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    show: bool = typer.Option(
        False, "--show", help="Print the resolved config (defaults filled, arms inherited) as YAML."
    ),
    out: Optional[Path] = typer.Option(
        None, help="The output folder it would run into (default: the config's out_dir)."
    ),
    config_only: bool = typer.Option(
        False,
        "--config-only",
        help="Check the config alone, not the world: for a study "
        "that runs elsewhere (ray_jobs/submit.sh), whose paths and models live there.",
    ),
):
    """Check a study config without running it: the config, and what `run` needs from the world
    (output folder, corpora, model and its limits, instruments, this machine's CPUs/GPUs)."""
    cfg = _load(config, set_, out)  # first: a bad config is refused before the study's imports
    from biasamp.instruments.leaning import power_statement
    from biasamp.study import check_before_run

    if not config_only:
        check_before_run(cfg)
    if show:
        import yaml

        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    n = len(cfg.arms) * len(cfg.seeds)
    typer.echo(
        f"{config}: OK — study '{cfg.study}', {len(cfg.arms)} arms x {len(cfg.seeds)} seeds = {n} trajectories, "
        f"G0..G{cfg.generations - 1}, model {cfg.model.kind}:{cfg.model.name}, hash {cfg.science_hash()}"
    )
    typer.echo(power_statement(cfg))


@app.command()
def run(
    config: Path,
    out: Optional[Path] = typer.Option(None, help="Output folder (default: the config's out_dir)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Run (or resume) a study: every (arm, seed) trajectory as a Ray task. CONFIG is a config file,
    or a study folder to resume as its manifest records it."""
    cfg = _load(config, set_, out)  # first: a bad config is refused before the study's imports
    from biasamp.instruments.leaning import power_statement

    typer.echo(power_statement(cfg))
    from biasamp.backends.ray_cluster import execute
    from biasamp.study import TrajectoriesFailed, run_study

    try:
        with _run_log(cfg) as log:
            result = run_study(cfg, execute, log=log)
    except TrajectoriesFailed as e:  # the others finished and are summarized; each failure, one line
        typer.secho(f"error: {e}:", err=True, fg="red")
        for line in e.lines:
            typer.secho(f"  {line}", err=True, fg="red")
        raise typer.Exit(1) from None
    _closing_lines(cfg, result.per_arm)
    typer.echo(f"results in {cfg.output_dir}")


@contextmanager
def _run_log(cfg: StudyConfig):
    """Where `run` says what happens. In a terminal: its lines above a live view of the study
    (progress.live_view, redrawn every 2 s from the study folder). Elsewhere (Ray job logs, CI, a
    file): the plain lines alone, the driver's summary line among them once a minute."""
    if not sys.stdout.isatty():
        yield typer.echo
        return
    from rich.live import Live

    from biasamp.progress import live_view, study_status

    shown = [live_view(study_status(cfg))]

    def view():
        try:
            shown[0] = live_view(study_status(cfg))
        except (OSError, ValueError):  # a log caught mid-write: the last view stays until the next redraw
            pass
        return shown[0]

    with Live(get_renderable=view, refresh_per_second=0.5) as live:
        yield lambda line: live.console.print(line, markup=False, highlight=False)


MAX_PRINTED_CI = 0.5  # a prevalence CI wider than this is not printed in the closing lines


def _closing_lines(cfg: StudyConfig, per_arm) -> None:
    """Each arm's last generation: leaning beside its degradation null, prevalence, each measure."""
    if per_arm is None:
        return
    import numpy as np

    from biasamp.tables import MEASURES

    c = cfg.scoring.classifier
    for r in per_arm.sort_values("generation").groupby("arm").tail(1).itertuples():
        # A prevalence whose CI spans most of [0, 1] says nothing: it is not printed (it stays in the table).
        prev = (
            f", prevalence ({c.prevalence}) {r.prev_right:.1%} [{r.prev_right_lo:.1%}, {r.prev_right_hi:.1%}]"
            if np.isfinite(r.prev_right) and r.prev_right_hi - r.prev_right_lo < MAX_PRINTED_CI
            else ""
        )
        calibrated = (
            f", right calibrated to its decay {r.share_right_calibrated:.1%} [{r.share_right_calibrated_lo:.1%}, "
            f"{r.share_right_calibrated_hi:.1%}]"
            if np.isfinite(r.share_right_calibrated)
            else ""
        )
        typer.echo(
            f"[{r.arm}] G{r.generation}: right (argmax) {r.share_right:.1%} [{r.share_right_lo:.1%}, "
            f"{r.share_right_hi:.1%}] (degradation alone: {r.null_share_right:.1%}), lean index "
            f"{r.lean_index:+.3f} [{r.lean_index_lo:+.3f}, {r.lean_index_hi:+.3f}] (degradation alone: "
            f"{r.null_lean_index:+.3f}){prev}{calibrated}, "
            + ", ".join(f"{m} {getattr(r, f'{m}_mean'):.2f}" for m in MEASURES)
        )
    typer.echo(f"summaries -> {cfg.output_dir / 'summary.parquet'}, {cfg.output_dir / 'summary_arms.parquet'}")


def _per_label(spec: str, center_only: bool) -> dict[str, int]:
    if center_only:
        return {"center": int(spec)}
    if spec.isdigit():
        return {lab: int(spec) for lab in ("left", "center", "right")}
    try:
        return {k.strip(): int(v) for k, v in (part.split("=") for part in spec.split(","))}
    except ValueError:
        raise typer.BadParameter("use N or left=N,center=N,right=N", param_hint="--per-label")


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Argument(..., help="Article-Bias-Prediction JSONL/folder, CSV, Parquet, hf:NAME or 'bundled'."),
    out: Path = typer.Option(..., help="Output .parquet or .jsonl.gz"),
    per_label: str = typer.Option("506", help="N per label, or left=N,center=N,right=N"),
    years: Optional[str] = typer.Option(None, help="Inclusive year range, e.g. 2012-2018"),
    max_words: Optional[int] = typer.Option(None, help="Drop articles longer than this"),
    seed: int = typer.Option(0),
    center_only: bool = typer.Option(False, help="Center articles only (the paper's alternative setup)"),
):
    """Draw a stratified study corpus from an AllSides-labelled source."""

    from biasamp.artifacts import check_output_path
    from biasamp.corpus import read_source, sample_corpus, write_jsonl_gz
    from biasamp.tables import write_parquet

    check_output_path(out, "file")
    if not out.name.endswith((".parquet", ".jsonl.gz")):
        raise ValueError(f"--out {out}: a corpus is written as .parquet or .jsonl.gz")
    span = years.split("-") if years else None
    if span is not None and (len(span) != 2 or not all(y.strip().isdigit() for y in span)):
        raise ValueError(f"--years {years}: expected FROM-TO, e.g. 2012-2018")
    per = _per_label(per_label, center_only)
    cfg = _from_flags(CorpusConfig, {}, source=source, per_label=per, years=span, max_words=max_words, seed=seed)
    corpus = sample_corpus(read_source(source), cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.endswith(".jsonl.gz"):
        write_jsonl_gz(corpus, out)
    else:
        write_parquet(corpus, out)
    counts = corpus["source_label"].value_counts().to_dict()
    typer.echo(f"{len(corpus)} articles {counts} -> {out}")


@app.command()
def score(
    study_dir: Path = typer.Argument(..., help="A study's output folder."),
    set_: list[str] = typer.Option([], "--set", help="Override scoring keys, e.g. --set scoring.classifier.name=DIR"),
):
    """Recompute the scores and summaries of a study (e.g. after changing the classifier)."""
    from biasamp.study import rescore_study, study_config

    for item in set_:  # the manifest is rewritten with the config scored: it must still describe what is on disk
        if (key := item.split("=", 1)[0].strip()).split(".")[0] != "scoring":
            raise ValueError(
                f"--set {key}: `score` changes scoring.* keys only; the rest is what {study_dir} holds "
                "(extend a study with `biasamp run`)"
            )
    cfg = study_config(study_dir, set_, {"scoring.enabled": True})
    per_arm = rescore_study(cfg, log=typer.echo)
    _closing_lines(cfg, per_arm)


def _classifier_config(
    kind: str,
    model: str,
    labels: str | None,
    max_tokens: int,
    calibration: str = "",
    method: str = "pcc",
    read: str = "body",
) -> ClassifierConfig:
    """The classifier the flags describe; a bad value is named by its flag."""

    pairs = [p.split("=", 1) for p in labels.split(",")] if labels else []
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--labels: expected MODEL_LABEL=left|center|right,..., got '{labels}'")
    return _from_flags(
        ClassifierConfig,
        {"name": "--model", "prevalence": "--method"},
        kind=kind,
        name=model,
        labels=dict(pairs) if pairs else ClassifierConfig().labels,
        max_tokens=max_tokens,
        calibration=calibration,
        read=read,
        prevalence=method,
    )


def _from_flags(settings, flags: dict[str, str], **values):
    """A settings model built from a command's flags; a bad value is one line naming its flag (a
    setting is --its-name unless `flags` says otherwise; a check of several names the one it mentions)."""
    from pydantic import ValidationError

    try:
        return settings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        key = str(err["loc"][0]) if err["loc"] else next((k for k in values if k in msg), next(iter(values)))
        raise ValueError(f"{flags.get(key, '--' + key.replace('_', '-'))}: {msg}") from None


@app.command()
def classify(
    input: Path = typer.Argument(
        ..., help="Articles: JSONL[.gz], JSON, CSV or Parquet with a text column (title, article_id optional)."
    ),
    out: Path = typer.Option(..., help="Output .parquet: the input's columns + p_left, p_center, p_right, label."),
    summary: Optional[Path] = typer.Option(
        None,
        help="Also write the file's label shares here (JSON): argmax shares and "
        "the confusion-corrected prevalence with 95% CIs.",
    ),
    kind: str = typer.Option("offline", help="offline: the project's TF-IDF classifier; hf: any sequence classifier."),
    model: str = typer.Option(
        "",
        help="Model file (offline) or hub id / local folder (hf); empty: the kind's default "
        "(the shipped model; the authors' RoBERTa).",
    ),
    labels: Optional[str] = typer.Option(
        None,
        help="--kind hf: model label map, e.g. LABEL_0=right,LABEL_1=left,LABEL_2=center "
        "(default: the authors' classifier's).",
    ),
    calibration: str = typer.Option(
        "",
        help="Calibration table for --summary's prevalence (default: the offline "
        "model's own; `biasamp classifier eval --kind hf` makes one).",
    ),
    method: str = typer.Option(
        "pcc",
        help="Prevalence method: pcc (mean probabilities), cc (argmax counts), or "
        "the same corrected for the confusion: pacc, acc.",
    ),
    max_tokens: int = typer.Option(500, min=8, help="--kind hf: input length."),
    batch_size: int = typer.Option(16, min=1),
    bootstrap: int = typer.Option(1000, min=10, help="Resamples for the prevalence CIs."),
):
    """Political leaning of any article file, with a pluggable classifier; with --summary, the
    file's label shares corrected for the classifier's confusion."""
    from biasamp.study import classify_file

    cfg = _classifier_config(kind, model, labels, max_tokens, calibration, method)
    result = classify_file(input, out, cfg, summary, batch_size, bootstrap)
    typer.echo(f"{len(result.scores)} articles {result.scores['label'].value_counts().to_dict()} -> {out}")
    if result.shares is not None:
        typer.echo(
            "prevalence ("
            + method
            + "): "
            + ", ".join(
                f"{lab} {v['estimate']:.1%} [{v['lo']:.1%}, {v['hi']:.1%}]"
                for lab, v in result.shares["prevalence"].items()
            )
            + f" -> {summary}"
        )


ABP_DIR = Path("../shared/data/article-bias-prediction")
EXCLUDE_HELP = "Study configs whose corpus articles are kept out (the bundled slice always is)."


@classifier_app.command("train")
def classifier_train(
    data: Path = typer.Option(
        ABP_DIR, help="Article-Bias-Prediction folder (or any corpus biasamp reads, with outlets)."
    ),
    out: Path = typer.Option(
        Path("biasamp/data/leaning_tfidf.npz"),
        help="Where the model goes (the shipped one by "
        "default); its calibration table goes beside it (NAME.calibration.parquet).",
    ),
    exclude_study: list[Path] = typer.Option([Path("configs/paper.yaml")], help=EXCLUDE_HELP),
    seed: int = typer.Option(0, help="Which articles of an outlet over the per-outlet cap are used."),
):
    """Fit the offline leaning classifier on every outlet, and its calibration by outlet-grouped cross-fitting."""
    from biasamp.artifacts import check_output_path
    from biasamp.instruments.leaning import calibration_path, study_article_ids, train, write_model

    check_output_path(out, "file")
    model, cal = train(data, study_article_ids(exclude_study), seed, log=typer.echo)
    write_model(model, cal, out)
    typer.echo(
        f"model ({len(model.vocabulary)} features) -> {out}; calibration ({len(cal)} outlets x labels) -> "
        f"{calibration_path(out)}"
    )


@classifier_app.command("eval")
def classifier_eval(
    data: Path = typer.Option(ABP_DIR, help="Article-Bias-Prediction folder."),
    exclude_study: list[Path] = typer.Option([Path("configs/paper.yaml")], help=EXCLUDE_HELP),
    kind: str = typer.Option(
        "offline",
        help="hf: also score a sequence classifier (--model) as it is, and make its "
        "calibration table (--calibration-out).",
    ),
    model: str = typer.Option("", help="--kind hf: hub id or local folder (default: the authors' RoBERTa)."),
    labels: Optional[str] = typer.Option(None, help="--kind hf: model label map (default: the authors' classifier's)."),
    max_tokens: int = typer.Option(500, min=8, help="--kind hf: input length."),
    calibration_out: Optional[Path] = typer.Option(None, help="--kind hf: write its calibration table here."),
    repeats: int = typer.Option(5, min=1, help="Benchmark corpora per known mix and fold."),
    out: Optional[Path] = typer.Option(
        None, help="Also write the full report (JSON) here, and the benchmark rows beside it."
    ),
):
    """Leave-outlets-out evaluation (every outlet held out once) of the shipped recipe beside a plain
    TF-IDF baseline, fitted in the same run: article macro-F1, and the error of corpus label shares
    on corpora of held-out outlets with known mixes, per prevalence method."""
    from biasamp.study import evaluate_classifier

    if kind not in ("offline", "hf"):
        raise ValueError(f"--kind: '{kind}' is not offline or hf")
    if kind != "hf" and calibration_out is not None:
        raise ValueError("--calibration-out: only with --kind hf (the offline model's comes from classifier train)")
    cfg = _classifier_config("hf", model, labels, max_tokens) if kind == "hf" else None
    report, cal = evaluate_classifier(data, exclude_study, cfg, repeats, out, calibration_out, log=typer.echo)
    _evaluation_lines(report)
    if cal is not None:
        typer.echo(f"calibration of {cfg.name} ({len(cal)} outlets x labels) -> {calibration_out}")


def _evaluation_lines(report: dict) -> None:
    typer.echo(
        f"{report['pool_articles']} articles of {report['outlets']} outlets, each outlet held out once "
        f"({report['folds']} folds)"
    )
    typer.echo(
        f"{'article level':30}{'macro-F1':>9}" + "".join(f"{'F1 ' + lab:>10}" for lab in ("left", "center", "right"))
    )
    for name, r in report["articles"].items():
        typer.echo(
            f"{name:30}{r['macro_f1']:9.3f}"
            + "".join(f"{r['per_class'][lab]['f1']:10.3f}" for lab in ("left", "center", "right"))
        )
    typer.echo(
        f"{'corpus shares':30}{'method':>7}{'corpora':>8}{'MAE':>7}{'max err':>8}{'95% CI covers':>14}"
        f"{'CI width':>9}{'slope':>7}{'r':>6}"
    )
    for r in report["prevalence"]:
        typer.echo(
            f"{r['classifier']:30}{r['method']:>7}{r['corpora']:8d}{r['mae']:7.3f}{r['max_error']:8.3f}"
            f"{r['coverage']:14.1%}{r['ci_width']:9.3f}{r['slope']:7.2f}{r['r']:6.2f}"
        )


@classifier_app.command("check")
def classifier_check(
    kind: str = typer.Option(
        "offline",
        help="offline: the project's classifier; hf: any sequence classifier; tiny_random: the tests' stand-in.",
    ),
    model: str = typer.Option(
        "", help="Model file (offline) or hub id / local folder (hf); empty: the kind's default."
    ),
    labels: Optional[str] = typer.Option(None, help="--kind hf: model label map (default: the authors' classifier's)."),
    max_tokens: int = typer.Option(500, min=8, help="--kind hf: input length."),
    articles: Optional[Path] = typer.Option(
        None,
        help="Labelled articles (any corpus biasamp reads, with "
        "bias/source_label). Default: --data's articles of outlets the shipped "
        "model never saw.",
    ),
    study: Optional[Path] = typer.Option(
        None,
        help="Check on a study's own corpus instead: a study folder (its corpus tables) or a study config "
        "(its corpora as drawn): the outlets a fine-tuned generator imitates.",
    ),
    data: Path = typer.Option(ABP_DIR, help="Article-Bias-Prediction folder, for the default articles."),
    per_label: int = typer.Option(300, min=10, help="Articles per label at most."),
    seed: int = typer.Option(0, help="Which articles the default draw takes, and the bootstrap."),
    method: str = typer.Option("pcc", help="Prevalence method whose shares (prev_*) are read too."),
    calibration: str = typer.Option("", help="Calibration table for pacc/acc (default: the offline model's own)."),
    bootstrap: int = typer.Option(1000, min=10, help="Paired bootstrap resamples for the shifts' CIs."),
    batch_size: int = typer.Option(16, min=1),
    read: str = typer.Option("body", help="What is read of each article: body (a study's default) or title_body."),
    out: Optional[Path] = typer.Option(
        None, help="Also write the table (Markdown) here, and its rows beside it (.parquet)."
    ),
):
    """Does the leaning instrument read text degradation as a leaning? Reads labelled articles intact
    and shortened, looped, shuffled, padded with repeated phrases and with gibberish, and prints the
    shift of every reading the summaries report, with paired bootstrap CIs, and intact macro-F1; then
    the largest shift within the articles of each true label."""
    from biasamp.study import check_classifier, study_articles

    cfg = _classifier_config(kind, model, labels, max_tokens, calibration, method, read)
    if study is not None and articles is not None:
        raise ValueError("--study and --articles: give one")
    pool = study_articles(study) if study is not None else None
    result = check_classifier(cfg, articles, data, per_label, seed, bootstrap, batch_size, out, pool=pool)
    typer.echo(result.text)


@app.command("leaning-change")
def leaning_change(
    before: Path = typer.Argument(
        ..., help="Real articles (JSONL/CSV/Parquet: article_id, title, text; label if known)."
    ),
    after: Path = typer.Argument(..., help="Articles continuing BEFORE's, id for id (a generation's articles)."),
    out: Path = typer.Option(..., help="The changes as JSON: readings.<reading>.raw/beyond_null/calibrated."),
    reference: Optional[Path] = typer.Option(
        None,
        help="Labelled articles (label: left/center/right) to calibrate on, each cut and looped as AFTER is. "
        "Default: BEFORE's labels; without them, --data's articles of outlets the shipped model never saw.",
    ),
    data: Path = typer.Option(ABP_DIR, help="Article-Bias-Prediction folder, for the default reference."),
    per_label: int = typer.Option(300, min=10, help="Default reference articles per label at most."),
    kind: str = typer.Option("offline", help="offline: the project's classifier; hf: any sequence classifier."),
    model: str = typer.Option("", help="Model file (offline) or hub id / local folder (hf); empty: the default."),
    labels: Optional[str] = typer.Option(None, help="--kind hf: model label map (default: the authors' classifier's)."),
    max_tokens: int = typer.Option(500, min=8, help="--kind hf: input length."),
    bootstrap: int = typer.Option(1000, min=10, help="Bootstrap draws (article ids resampled, paired)."),
    batch_size: int = typer.Option(16, min=1),
    seed: int = typer.Option(0),
    read: str = typer.Option("body", help="What is read of each article: body (a study's default) or title_body."),
):
    """The change of leaning from BEFORE to AFTER, as a study computes a generation's change from G0:
    raw, beyond the degradation null (BEFORE cut and looped to AFTER's length and repetition), and
    calibrated to AFTER's decay in label units, each with a 95% CI."""
    from biasamp.study import leaning_change as change

    cfg = _classifier_config(kind, model, labels, max_tokens, read=read)
    typer.echo(change(before, after, out, cfg, reference, data, per_label, bootstrap, batch_size, seed).text)


@quality_app.command("train")
def quality_train(
    data: Path = typer.Option(ABP_DIR, help="Article-Bias-Prediction folder (or any corpus biasamp reads)."),
    out: Path = typer.Option(
        Path("biasamp/data/quality_proxy.npz"), help="Where the proxy goes (the shipped one by default)."
    ),
    exclude_study: list[Path] = typer.Option(
        [Path("configs/paper.yaml")], help="Study configs whose corpus articles are not used."
    ),
    seed: int = typer.Option(0),
):
    """Count the word LM and fit the level model on controlled corruptions of real sentences."""
    from biasamp.artifacts import check_output_path
    from biasamp.instruments.leaning import study_article_ids
    from biasamp.instruments.quality import train

    check_output_path(out, "file")
    proxy = train(data, study_article_ids(exclude_study), seed, log=typer.echo)
    proxy.save(out)
    typer.echo(f"quality proxy -> {out}")


@quality_app.command("eval")
def quality_eval(
    data: Path = typer.Option(ABP_DIR, help="As for train (the same seed keeps the evaluation articles apart)."),
    proxy: str = typer.Option("bundled", help="Proxy file, or 'bundled' for the shipped one."),
    exclude_study: list[Path] = typer.Option([Path("configs/paper.yaml")], help="As for train."),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="Also write the report (JSON) here."),
):
    """AUC per adjacent level pair on held-out corruptions, and the index of clean vs looping articles."""
    from biasamp.artifacts import check_output_path, write_json
    from biasamp.instruments.leaning import study_article_ids
    from biasamp.instruments.quality import QualityProxy, evaluate

    if out is not None:
        check_output_path(out, "file")
    result = evaluate(QualityProxy.load(proxy), data, study_article_ids(exclude_study), seed)
    typer.echo(
        f"{result['sentences']} held-out sentences; AUC of adjacent levels: "
        + ", ".join(f"{k}: {v:.3f}" for k, v in result["auc_adjacent"].items())
    )
    typer.echo(
        "mean expected level by true level: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in result["mean_expected_level"].items())
    )
    typer.echo(
        "article TQI (200 held-out articles): " + ", ".join(f"{k} {v:.2f}" for k, v in result["article_tqi"].items())
    )
    if out is not None:
        write_json(result, out)


@app.command("import-paper")
def import_paper_cmd(
    folder: Path = typer.Argument(..., help="The authors' Bias_Performance_and_Generation_Quality folder."),
    out: Path = typer.Option(..., help="Output folder for scores.parquet, summary.parquet, summary_arms.parquet."),
    bootstrap: int = typer.Option(1000, min=10),
):
    """The authors' released per-article numbers as biasamp scores and summary tables."""
    from biasamp.artifacts import check_output_path
    from biasamp.stages.summarize import import_paper, write_summaries
    from biasamp.tables import write_parquet

    check_output_path(out, "folder")
    scores, warnings = import_paper(folder)
    for w in warnings:
        typer.secho(f"warning: {w}", err=True, fg="yellow")
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(scores, out / "scores.parquet")
    _, per_arm = write_summaries(out, scores, bootstrap)
    for (study, arm), part in per_arm.groupby(["study", "arm"]):
        shares = " ".join(f"G{r.generation}:{r.share_right:.1%}" for r in part.itertuples())
        typer.echo(f"{study}/{arm} right: {shares}")
    typer.echo(f"{len(scores)} article scores -> {out}")


@app.command()
def analyze(
    study_dir: Path = typer.Argument(
        ..., help="A study's output folder, or an `import-paper` folder (contrasts only)."
    ),
    summary: Optional[Path] = typer.Option(None, help="Summary table (default: STUDY_DIR/summary.parquet)."),
    targets: str = typer.Option("share_right,tqi_mean", help="Summary columns to explain, comma-separated."),
    mode: str = typer.Option(
        "within",
        help="within: first differences inside each trajectory (calibrated); "
        "paper: the authors' pooled levels, as they ran it.",
    ),
    maxlags: int = typer.Option(1, min=0, help="Newey-West lags."),
    alpha: float = typer.Option(0.05, min=0.0, max=1.0, help="Significance level (BH q; raw p in paper mode)."),
    null_draws: int = typer.Option(10, min=0, help="Surrogate-null repetitions for the expected false discoveries."),
    baseline: Optional[str] = typer.Option(
        None, help="Arm that contrasts subtract (default: the config's analysis.baseline_arm, else its first arm)."
    ),
    bootstrap: int = typer.Option(1000, min=10, help="Bootstrap resamples for the arm contrasts and trends."),
):
    """Neuron tests (per-neuron OLS with a surrogate-null diagnostic) and arm contrasts with CIs."""
    from biasamp.study import analyze_study

    if mode not in ("within", "paper"):
        raise typer.BadParameter("within or paper", param_hint="--mode")
    targets = [t.strip() for t in targets.split(",")]
    result = analyze_study(
        study_dir, summary, targets, mode, maxlags, alpha, null_draws, baseline, bootstrap, typer.echo
    )
    for w in result.warnings:
        typer.secho(f"warning: {w}", err=True, fg="yellow")
    if result.neuron_counts is not None:
        _neuron_lines(result.neuron_counts, f"{mode} mode, {result.neuron_file.name}", null_draws)
    if result.contrasts is not None:
        _contrast_lines(result.contrasts, study_dir)


def _neuron_lines(counts, what: str, null_draws: int) -> None:
    import pandas as pd

    typer.echo(
        f"neuron tests ({what}): significant / neurons, and the count expected under the null "
        f"({null_draws} surrogate draws)"
    )
    for r in counts.itertuples():
        expected = (
            ""
            if pd.isna(r.null_expected_significant)
            else f"   null expects {r.null_expected_significant:.1f} (max {int(r.null_max_significant)})"
        )
        typer.echo(
            f"  {r.neurons:28} {r.target:14} {r.significant:7d} / {r.of}{expected}"
            f"   [{r.n_obs} obs, {r.n_trajectories} trajectories]"
        )


def _contrast_lines(contrasts, study_dir: Path) -> None:
    last = contrasts.sort_values(["study", "arm", "target", "generation"]).groupby(["study", "arm", "target"]).tail(1)
    printed = ["share_right", "share_right_calibrated", "lean_index", "lean_index_beyond_null", "tqi_mean"]
    for r in last[last["target"].isin(printed)].itertuples():
        ci = "" if r.seed_variation_in_ci else "  (one seed: articles only)"
        p = "p<0.0001" if r.p < 1e-4 else f"p={r.p:.2g}"
        typer.echo(
            f"  {r.study}: {r.arm} - {r.baseline} at G{r.generation}, {r.target}: {r.estimate:+.3f} "
            f"[{r.lo:+.3f}, {r.hi:+.3f}] {p}{ci}"
        )
    typer.echo(f"arm contrasts -> {study_dir / 'arm_contrasts.parquet'}, trends -> {study_dir / 'arm_trends.parquet'}")


@app.command()
def status(
    study_dir: Path = typer.Argument(..., help="A study's output folder, running or not."),
    json_: bool = typer.Option(False, "--json", help="Print the status as JSON, for scripts."),
    as_of: Optional[str] = typer.Option(
        None,
        "--as-of",
        help="The study as its logs show it at this local time (YYYY-MM-DD HH:MM:SS): the estimate made "
        "back then, to hold against when the run ended.",
    ),
):
    """Where a study stands, from its folder alone (no Ray): each trajectory's generation and stage,
    done / running / failed / waiting, the median time per generation and stage, and an ETA."""
    import json
    from datetime import datetime

    from biasamp.progress import study_status
    from biasamp.study import study_config

    at = None
    if as_of is not None:
        try:
            at = datetime.fromisoformat(as_of).timestamp()
        except ValueError:
            raise typer.BadParameter(f"{as_of!r} is not a time such as 2026-12-03 15:41:52", param_hint="--as-of")
    s = study_status(study_config(study_dir), at)
    if json_:
        typer.echo(json.dumps(s.to_json(), indent=1))
        return
    _status_lines(s, study_dir)


def _status_lines(s, study_dir: Path) -> None:
    from datetime import datetime

    from biasamp.progress import duration, summary_line

    held = f" (pid {s.pid})" if s.pid else ""
    typer.echo(f"study {s.study} in {s.out}: {s.state}{held}; {summary_line(s)}")
    width = max(len(t.arm) for t in s.trajectories)
    typer.echo(f"  {'arm':{width}}  seed  {'generation':10}  {'stage':8}  state")
    for t in s.trajectories:
        g = f"G{t.generation}/{s.generations - 1}" if t.generation is not None else f"{t.generations_done} done"
        what = t.state + (f" ({t.detail})" if t.detail else "")
        if t.state == "failed":
            what += f": {t.error} (log: {t.log})"
        typer.echo(f"  {t.arm:{width}}  {t.seed:4}  {g:10}  {t.stage or '-':8}  {what}")
    if s.median_generation_seconds is not None:
        stages = ", ".join(f"{k} {duration(v)}" for k, v in s.median_stage_seconds.items())
        typer.echo(f"median generation {duration(s.median_generation_seconds)} ({stages})")
    left = s.generations_total - s.generations_done
    if s.state in ("stopped", "failed", "not started") and left:
        time_left = "" if s.remaining_seconds is None else f", about {duration(s.remaining_seconds)} of trajectory time"
        typer.echo(f"{left} generations left{time_left}; resume: biasamp run {study_dir}")
    if s.state == "running" and s.eta is not None:
        typer.echo(f"ETA {datetime.fromtimestamp(s.eta):%Y-%m-%d %H:%M:%S}")


@app.command()
def report(
    study_dirs: list[Path] = typer.Argument(
        ..., help="Study folders (several share the axes), or import-paper folders."
    ),
    out: Path = typer.Option(..., help="Report folder: index.html and each figure as PNG and SVG."),
    paper: Optional[Path] = typer.Option(
        None, help="An `import-paper` folder: the authors' curves, dashed, on our axes."
    ),
    simulation: Optional[Path] = typer.Option(None, help="A `biasamp simulate` folder whose figures to include."),
    wandb: Optional[str] = typer.Option(
        None,
        help="ENTITY/PROJECT (or PROJECT with wandb.entity in the config): also publish the W&B Report comparing "
        "the arms (network, WANDB_API_KEY, the runs synced, and the `report` extra).",
    ),
):
    """Figures and one self-contained HTML page from a study's tables (and the W&B Report)."""
    from biasamp.study import report_study

    result = report_study(study_dirs, out, paper, simulation, wandb)
    for w in result.warnings:
        typer.secho(f"warning: {w}", err=True, fg="yellow")
    typer.echo(f"report -> {result.page.resolve()}  (open it in a browser)")
    if result.url:
        typer.echo(f"W&B Report: {result.url}")
    if result.error:  # the page is written; publishing again is `biasamp report ... --wandb` once online
        typer.secho(f"error: {result.error}", err=True, fg="red")
        raise typer.Exit(1)


@app.command()
def simulate(
    out: Path = typer.Option(Path("runs/simulation"), help="Output folder."),
    generations: int = typer.Option(10, min=1),
    seed: int = typer.Option(0),
):
    """The paper's appendix: weighted MLE vs plain MLE of Beta fits over generations."""
    from biasamp.artifacts import check_output_path
    from biasamp.simulate import plot
    from biasamp.simulate import simulate as run_simulation
    from biasamp.tables import write_parquet

    check_output_path(out, "folder")
    df = run_simulation(generations=generations, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(df, out / "simulation.parquet")
    for method in ("wmle", "mle"):
        plot(df, method, out / f"simulation_{method}.png")
    last = df[df["generation"] == generations - 1].set_index("method")["mean"]
    typer.echo(
        f"mean after G{generations - 1}: WMLE {last['wmle']:.3f}, MLE {last['mle']:.3f} "
        f"(pretrained {df['mean'].iloc[0]:.3f}, data 0.500) -> {out}"
    )


def _one_line_errors(command):
    """A command whose bad input ends in one line and exit 2 (see _user_error)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, OSError, RuntimeError) as e:
            if (message := _user_error(e)) is None:
                raise
            typer.secho(f"error: {message}", err=True, fg="red")
            raise typer.Exit(2) from None

    return run


# One boundary for every command: each is wrapped here, not one by one.
for _typer in (app, data_app, classifier_app, quality_app):
    for _info in _typer.registered_commands:
        _info.callback = _one_line_errors(_info.callback)


_stopped_by: list = [None, None]  # the signal that raised the KeyboardInterrupt; stderr, set aside


def _stop(signum, frame):
    """SIGINT, SIGTERM (a scheduler's, `ray job stop`'s) and SIGHUP (a closed terminal or SSH session)
    raise KeyboardInterrupt: no `except Exception` swallows it, every `finally` on the way out runs
    (Ray's placement groups removed, Ray shut down), and Ray's compiled calls (ray.wait) pass it on,
    which they do not for an exception of our own.
    Until the command has unwound, descriptor 2 goes to /dev/null: Ray's C++ core writes there what
    it can no longer tell a stopping driver (`task_manager.cc: Failed to push error to driver`)."""
    if _stopped_by[1] is None:
        _stopped_by[1] = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    _stopped_by[0] = signum
    raise KeyboardInterrupt


def _torch_cache_dir() -> Path:
    """The folder `import torch` makes, empty, in the temp dir (torch._inductor's cache_dir, whose
    private module is not imported here: reading its rule costs less than importing torch)."""
    import getpass
    import os
    import tempfile

    return Path(
        os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    )


def _empty_argument(args: list[str]) -> str | None:
    """The first argument that is empty or only spaces (`--out ''`, `--out=`, `analyze ''`), named."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if arg.startswith("--") and eq and not value.strip():
            return flag
        if not arg.strip():
            return args[i - 1] if i and args[i - 1].startswith("--") else f"argument {i + 1}"
    return None


def cli() -> None:
    """The `biasamp` command. A usage error (an unknown flag, a bad value) is one line and exit 2,
    like every other user error; programming errors keep their traceback. SIGINT, SIGTERM and SIGHUP
    end it with one line and exit 130 / 143 / 129 (Ray's own SIGTERM handler would dump C++ frames: the Ray layer
    puts this one back after starting Ray)."""
    usage_error = typer.BadParameter.__bases__[0]  # typer vendors click; its UsageError is not exported
    if empty := _empty_argument(sys.argv[1:]):  # click reads an empty path as ".", the current folder
        typer.secho(f"error: biasamp: {empty} is empty; give a path or value (see biasamp --help)", err=True, fg="red")
        sys.exit(2)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    inductor = _torch_cache_dir()
    made_inductor = not inductor.exists()
    try:
        code = app(standalone_mode=False)  # typer returns 130 for a KeyboardInterrupt
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `biasamp classifier`: its help
            e.show()
            sys.exit(2)
        where = e.ctx.command_path if e.ctx else "biasamp"
        typer.secho(f"error: {where}: {e.format_message()} (see {where} --help)", err=True, fg="red")
        sys.exit(2)
    finally:
        if _stopped_by[1] is not None:  # stderr back: the stop's one line, or whatever else ended it
            os.dup2(_stopped_by[1], 2)
        if made_inductor and inductor.is_dir() and not any(inductor.iterdir()):
            inductor.rmdir()
    if _stopped_by[0] is not None:
        resume = shlex.join(["biasamp", *sys.argv[1:]])
        name = signal.Signals(_stopped_by[0]).name
        typer.secho(f"stopped by {name}; finished work is kept: `{resume}` resumes", err=True, fg="red")
        sys.exit(128 + _stopped_by[0])
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    cli()
