"""The application layer: what each `biasamp` command does, as plain functions over a validated
config or a study folder. They return typed results and never print (progress goes to `log`); the
CLI (biasamp.cli) parses, calls one of these, and formats what comes back. The scale-out layer is
passed in (`run_study`'s `execute`: biasamp.backends.ray_cluster.execute), never imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from biasamp import artifacts
from biasamp.config import ClassifierConfig, ModelConfig, StudyConfig, apply_overrides, from_dict, load_config, updated
from biasamp.files import sha256
from biasamp.instruments.leaning import load_calibration
from biasamp.preflight import (
    check_libraries,
    check_ray_address,
    check_resources,
    check_socket_dir,
    check_study,
    check_wandb_env,
    local_machine,
)
from biasamp.stages.summarize import SETTINGS_KEY, settings_of_scores, write_summaries
from biasamp.tables import TABLES, file_metadata, parquet_damage, write_parquet

# The model stack (torch, transformers: about 8 s) is imported inside the functions that use it, so
# that `biasamp run` on a finished study, or one that fails its checks, answers at once.


# --- run -------------------------------------------------------------------------------------------


def check_before_run(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    """Everything `run` checks before it writes anything or starts Ray (`biasamp validate` runs the
    same): preflight.check_study and the W&B variables, and for a private local Ray this machine's
    CPUs, GPUs and temp path (Ray's sockets), for a cluster that its address answers. Returns the
    corpora drawn for a folder that lacks them."""
    check_wandb_env(cfg)  # the environment first: seconds before the corpora and the model are read
    if cfg.resources.ray_address is None:
        check_socket_dir()
    else:
        check_ray_address(cfg.resources.ray_address)
    drawn = check_study(cfg)
    if cfg.resources.ray_address is None:  # a private Ray gets this machine: check it now, not after Ray's start
        check_libraries(cfg)
        check_resources(cfg, local_machine())
    return drawn


def prepare_study(cfg: StudyConfig, log=print) -> list[tuple[str, int]]:
    """Check everything that can be checked before Ray (check_before_run), then claim the output
    folder, write the corpora once, and list the unfinished trajectories. Nothing is written before
    the checks pass: a run that fails them leaves no manifest behind to refuse the corrected config."""
    out = cfg.output_dir
    drawn = check_before_run(cfg)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.claim_output_dir(cfg, out)
    for name, corpus in drawn.items():
        path = TABLES["corpus"].write(corpus, out, corpus=name)
        log(f"corpus '{name}': {len(corpus)} articles -> {path}")
    return [(arm, seed) for arm in cfg.arms for seed in cfg.seeds if not _whole(out, arm, seed, cfg.generations)]


def _whole(out: Path, arm: str, seed: int, generations: int) -> bool:
    """Every generation's articles written and readable (a damaged one is set aside and run again by
    the trajectory's own check, stages.trajectory._verified)."""
    articles = TABLES["articles"]
    return artifacts.completed_generations(out, arm, seed) >= generations and all(
        parquet_damage(articles.file(out, arm=arm, seed=seed, generation=g)) is None for g in range(generations)
    )


@dataclass
class RunResult:
    trajectories: int  # in the study
    pending: int  # of them unfinished when the run began
    generations_run: int
    time_by_stage: str | None  # None: nothing ran
    per_arm: pd.DataFrame | None  # summary_arms as written (None: scoring off, or nothing to summarize)


# execute(cfg, pending, log) -> (generations run, one line per failed trajectory): the Ray layer.
Executor = Callable[[StudyConfig, list[tuple[str, int]], Callable[[str], None]], tuple[int, list[str]]]


def run_study(cfg: StudyConfig, execute: Executor, log=print) -> RunResult:
    """Run every unfinished trajectory of the study with `execute` (one writer per folder), then the
    study-level summaries."""
    cfg = keep_recorded_reading(cfg, log)
    with artifacts.own_output_dir(cfg.output_dir, log):
        pending = prepare_study(cfg, log)
        total = len(cfg.arms) * len(cfg.seeds)
        if not pending:
            log(
                f"nothing to do: all {total} trajectories of '{cfg.study}' have G0..G{cfg.generations - 1} "
                f"in {cfg.output_dir}"
            )
            # a run killed after its last trajectory (or an extension's): the summaries are derived
            # state, rebuilt whenever what they were built from changed
            per_arm = summarize_study(cfg, log) if cfg.scoring.enabled and not summaries_current(cfg) else None
            return RunResult(total, 0, 0, None, per_arm)
        log(
            f"study '{cfg.study}': {len(pending)} of {total} trajectories to run, "
            f"{cfg.resources.cpus_per_trajectory:g} CPU / {cfg.resources.gpus_per_trajectory:g} GPU each"
        )
        ran, failed = execute(cfg, pending, log)
        split = time_by_stage(cfg.output_dir) if ran else None
        if split:
            log(split)
        # What finished is summarized even when some trajectories failed: the summaries hold the
        # trajectories that are there, and the run ends by naming those that are not.
        scored = TABLES["scores"].where(cfg.output_dir).is_dir()
        per_arm = summarize_study(cfg, log) if cfg.scoring.enabled and scored and not summaries_current(cfg) else None
        if failed:
            raise TrajectoriesFailed(len(failed), len(pending), failed)
        return RunResult(total, len(pending), ran, split, per_arm)


def recorded_reading(out: Path) -> str | None:
    """What a study's scores were read as (scoring.classifier.read; title_body before the setting
    existed); None where it has no recorded scores, or scores read both ways."""
    reads = {json.loads(s).get("classifier_reads", "title_body") for s in settings_of_scores(out) if s != "unrecorded"}
    return reads.pop() if len(reads) == 1 else None


def keep_recorded_reading(cfg: StudyConfig, log=print) -> StudyConfig:
    """A study resumed with the default reading (body) keeps the reading its scores were made with:
    a study from before scoring.classifier.read goes on reading title and body. Another reading is
    `biasamp score OUT --set scoring.classifier.read=...`, which rescores every generation."""
    recorded = recorded_reading(cfg.output_dir) if cfg.output_dir.is_dir() else None
    if recorded is None or recorded == cfg.scoring.classifier.read or cfg.scoring.classifier.read != "body":
        return cfg
    log(
        f"{cfg.output_dir}: its scores read {recorded}, and so do its new generations (to read bodies: "
        f"biasamp score {cfg.output_dir} --set scoring.classifier.read=body)"
    )
    return updated(cfg, {"scoring.classifier.read": recorded})


class TrajectoriesFailed(Exception):
    """Some trajectories failed; the others finished and were summarized. Rerunning runs only these."""

    def __init__(self, n: int, of: int, lines: list[str]):
        self.lines = lines
        super().__init__(f"{n} of {of} trajectories failed (the others finished; a rerun runs only these)")


def time_by_stage(out) -> str:
    """Where the study's time went: each stage's total over every generation written (train_metrics'
    train/capture/generate/score_seconds), its share, and its median per generation."""
    per_generation = TABLES["train_metrics"].read(out).drop_duplicates(["arm", "seed", "generation"])
    seconds = {
        c.removesuffix("_seconds"): per_generation[c]
        for c in TABLES["train_metrics"].columns
        if c.endswith("_seconds") and c in per_generation
    }  # a study begun before they were recorded
    total = sum(s.sum() for s in seconds.values())
    parts = [
        f"{stage} {s.sum():.0f} s ({s.sum() / total:.0%}, median {s.median():.1f} s)"
        for stage, s in seconds.items()
        if s.notna().any()
    ]
    return f"time by stage over {len(per_generation)} generations: {', '.join(parts)}"


SUMMARY_INPUTS_KEY = "biasamp.summary_inputs"  # Parquet footer key of both summary files


def summary_inputs(cfg: StudyConfig, calibration: pd.DataFrame | None) -> str:
    """What the summaries are a function of: every scores file (name and SHA-256), the bootstrap,
    the prevalence method and its calibration table. Both summary files record it; a summary that
    records other inputs is stale (e.g. an extension interrupted after its last trajectory)."""
    where = TABLES["scores"].where(cfg.output_dir)
    files = {f.stem: sha256(f)[:16] for f in sorted(where.glob("*.parquet"))} if where.is_dir() else {}
    cal = None if calibration is None else str(pd.util.hash_pandas_object(calibration, index=False).sum())
    c = cfg.scoring
    return json.dumps(
        {"scores": files, "bootstrap": c.bootstrap, "prevalence": c.classifier.prevalence, "calibration": cal},
        sort_keys=True,
    )


def summaries_current(cfg: StudyConfig) -> bool:
    """Both summary files exist, read, and were built from the study's scores and settings as they are now."""
    expected = summary_inputs(cfg, load_calibration(cfg.scoring.classifier))
    for name in ("summary", "summary_arms"):
        path = TABLES[name].file(cfg.output_dir)
        if parquet_damage(path) is not None or file_metadata(path, SUMMARY_INPUTS_KEY) != expected:
            return False
    return True


def summarize_study(cfg: StudyConfig, log=print) -> pd.DataFrame:
    """Both summary tables from every scores file, written with what they were built from, and sent
    to the study's W&B group; returns summary_arms."""
    # Imported here, inside the study's scratch space: importing wandb makes a temp folder, which a
    # killed driver would leave in the system temp dir.
    from biasamp.tracking import log_study_tables

    out = cfg.output_dir
    c = cfg.scoring.classifier
    cal = load_calibration(c)
    inputs = {SUMMARY_INPUTS_KEY: summary_inputs(cfg, cal)}  # before reading: a file added meanwhile makes it stale
    per_seed, per_arm = write_summaries(
        out, TABLES["scores"].read(out), cfg.scoring.bootstrap, cal, c.prevalence, metadata=inputs
    )
    log_study_tables(cfg, "summary", {"summary_arms": per_arm, "summary": per_seed}, log)
    return per_arm


# --- score: a study's scores again -----------------------------------------------------------------


def study_config(study_dir: Path, overrides: list[str] = (), changes: dict | None = None) -> StudyConfig:
    """The config a study folder's manifest records, with `--set` overrides and `changes` (dotted
    key -> value) applied, validated; its out_dir is the folder."""
    manifest = Path(study_dir) / "manifest.json"
    if not manifest.exists():
        raise ValueError(f"{manifest} not found: not a study folder")
    raw = artifacts.read_manifest(study_dir)["config"]
    classifier = raw.get("scoring", {}).get("classifier")
    if isinstance(classifier, dict) and "read" not in classifier:  # a study from before `read`: as it was read
        classifier["read"] = recorded_reading(study_dir) or "title_body"
    apply_overrides(raw, list(overrides))
    cfg = from_dict(raw, str(manifest))
    return updated(cfg, {"out_dir": str(Path(study_dir).resolve()), **(changes or {})})


def rescore_study(cfg: StudyConfig, log=print) -> pd.DataFrame:
    """Score every written generation again (e.g. with another classifier) and redo the summaries;
    returns summary_arms. Plain Python, one trajectory after another."""
    import torch

    from biasamp.models import load_checkpoint
    from biasamp.stages.score import load_instruments, score_articles

    out = cfg.output_dir
    with artifacts.own_output_dir(out, log):
        artifacts.claim_output_dir(cfg, out, record=False)  # the same trajectories are required
        versions = [
            (arm, seed, g)
            for arm in cfg.arms
            for seed in cfg.seeds
            for g in range(artifacts.completed_generations(out, arm, seed))
        ]
        carried = _carried_perplexities(cfg, versions)
        inst = load_instruments(cfg.scoring, cfg.model)
        for arm, seed, g in versions:
            articles = TABLES["articles"].read_one(out, arm=arm, seed=seed, generation=g)
            real = TABLES["corpus"].read_one(out, corpus=cfg.arms[arm].corpus)
            with torch.no_grad():
                if (arm, seed, g) in carried:
                    scores = score_articles(inst, articles, real)
                    scores["ppl"] = scores[["article_id"]].merge(carried[arm, seed, g], how="left")["ppl"].to_numpy()
                else:
                    model, tok = load_checkpoint(artifacts.checkpoint_dir(out, arm, seed, g))
                    scores = score_articles(inst, articles, real, own=(model.eval(), tok))
            TABLES["scores"].write(
                scores, out, metadata={SETTINGS_KEY: inst.settings}, arm=arm, seed=seed, generation=g
            )
            note = " (own perplexity carried over: checkpoint not kept)" if (arm, seed, g) in carried else ""
            log(f"[{arm}/seed{seed}] G{g}: scored {len(scores)} articles{note}")
        artifacts.claim_output_dir(cfg, out)  # the manifest now says how every score was made
        return summarize_study(cfg, log)


def _carried_perplexities(cfg: StudyConfig, versions) -> dict:
    """A generation's perplexity under its own model needs that model; where its checkpoint was not
    kept (keep_checkpoints: last) the perplexities already scored carry over, if made with this
    perplexity_max_tokens (they do not depend on the instruments)."""
    out, carried = cfg.output_dir, {}
    for arm, seed, g in versions:
        if not artifacts.checkpoint_dir(out, arm, seed, g).is_dir():
            old = TABLES["scores"].file(out, arm=arm, seed=seed, generation=g)
            made = json.loads(file_metadata(old, SETTINGS_KEY) or "{}") if old.exists() else {}
            if made.get("perplexity_max_tokens") != cfg.scoring.perplexity_max_tokens:
                raise ValueError(
                    f"{out}: checkpoints/{arm}/seed{seed}/gen{g} is not kept (keep_checkpoints: "
                    f"{cfg.keep_checkpoints}) and no perplexities with perplexity_max_tokens="
                    f"{cfg.scoring.perplexity_max_tokens} were scored from it: cannot rescore"
                )
            carried[arm, seed, g] = pd.read_parquet(old, columns=["article_id", "ppl"])
    return carried


# --- analyze ---------------------------------------------------------------------------------------


@dataclass
class AnalyzeResult:
    neuron_file: Path | None = None  # the neuron tests written (None: the folder has no neurons/)
    neuron_counts: pd.DataFrame | None = None  # per (neurons, target): significant, and under the null
    warnings: list[str] = field(default_factory=list)
    contrasts: pd.DataFrame | None = None  # None: the folder has no scores
    trends: pd.DataFrame | None = None


def analyze_study(
    study_dir: Path,
    summary: Path | None = None,
    targets: list[str] = ("share_right", "tqi_mean"),
    mode: str = "within",
    maxlags: int = 1,
    alpha: float = 0.05,
    null_draws: int = 10,
    baseline: str | None = None,
    bootstrap: int = 1000,
    log=print,
) -> AnalyzeResult:
    """Neuron tests (per-neuron OLS with a surrogate-null diagnostic) and arm contrasts with CIs, of
    a study folder or an `import-paper` folder (contrasts only); written beside the study's tables."""
    from biasamp.stages.analyze import arm_contrasts, neuron_counts, neuron_tests

    if mode not in ("within", "paper"):
        raise ValueError("--mode: within or paper")
    if not Path(study_dir).is_dir():
        raise ValueError(f"{study_dir}: no such folder")
    summary = summary or study_dir / "summary.parquet"
    scores = next((p for p in (study_dir / "scores", study_dir / "scores.parquet") if p.exists()), None)
    has_neurons = (study_dir / "neurons").exists()
    if not has_neurons and scores is None:
        raise ValueError(f"{study_dir} has neither neurons/ nor scores: nothing to analyze")
    result = AnalyzeResult()
    with artifacts.own_output_dir(study_dir, log):  # one writer per study folder
        cfg = study_config(study_dir) if (study_dir / "manifest.json").exists() else None
        baseline = baseline or (cfg.analysis.baseline_arm if cfg else None)
        if has_neurons:
            if not summary.exists():
                raise FileNotFoundError(f"{summary} not found (neuron tests need the per-generation summary)")
            tests, report = neuron_tests(
                TABLES["neurons"].read(study_dir),
                TABLES["summary"].read_at(summary),
                list(targets),
                mode,
                maxlags,
                alpha,
                null_draws,
            )
        if scores is not None:
            result.contrasts, result.trends = arm_contrasts(TABLES["scores"].read_at(scores), baseline, bootstrap)
        if has_neurons:
            result.neuron_file = study_dir / (
                "neuron_tests.parquet" if mode == "within" else f"neuron_tests_{mode}.parquet"
            )
            write_parquet(tests, result.neuron_file)  # checked against TABLES["neuron_tests"] by neuron_tests
            # One summary file, one section per mode: a paper-mode run never hides the within-mode one.
            info_path = study_dir / "neuron_tests_summary.json"
            info = json.loads(info_path.read_text()) if info_path.exists() else {}
            info[mode] = report
            artifacts.write_json(info, info_path)
            result.warnings, result.neuron_counts = report["warnings"], neuron_counts(tests, report, mode)
        if scores is not None:
            TABLES["arm_contrasts"].write(result.contrasts, study_dir)
            TABLES["arm_trends"].write(result.trends, study_dir)
        if cfg is not None:  # the study's W&B group gets the tables too
            from biasamp.tracking import log_study_tables

            log_study_tables(
                cfg,
                f"analyze-{mode}",
                {"neuron_counts": result.neuron_counts, "arm_contrasts": result.contrasts, "arm_trends": result.trends},
                log,
            )
    return result


# --- report ----------------------------------------------------------------------------------------


@dataclass
class ReportResult:
    page: Path
    warnings: list[str] = field(default_factory=list)
    url: str | None = None  # the published W&B Report
    error: str | None = None  # why it was not published


def report_study(
    folders: list[Path], out: Path, paper: Path | None = None, simulation: Path | None = None, wandb: str | None = None
) -> ReportResult:
    """Figures and one self-contained HTML page from study tables, and with `wandb` (ENTITY/PROJECT)
    the W&B Report, built before anything is written and published after the page."""
    from biasamp.stages.report import build, load_all, publish, same_names, wandb_entity, wandb_report

    artifacts.check_output_path(out, "folder")
    report = None
    studies = load_all(folders)
    shared = same_names(studies)
    if wandb:
        if shared:  # the Report's run sets filter by W&B group, which is the study name
            raise ValueError(f"--wandb: {shared[0]}: their runs share one W&B group; give one another study name")
        entity, project = wandb_entity(wandb, studies)
        try:
            import wandb_workspaces  # noqa: F401
        except ImportError:
            raise ValueError(
                "--wandb: a W&B Report needs the wandb-workspaces package: pip install -e '.[report]'"
            ) from None
        report = wandb_report(studies, entity, project)
    result = ReportResult(build(studies, out, paper, simulation), [f"{w}: told apart by folder" for w in shared])
    if report is not None:
        try:
            result.url = publish(report)
        except Exception as e:  # no network, no key: the page is written anyway; `--wandb` again later
            result.error = f"W&B Report not published ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return result


# --- classify --------------------------------------------------------------------------------------


@dataclass
class ClassifyResult:
    scores: pd.DataFrame  # the input's columns + p_left, p_center, p_right, label
    shares: dict | None  # with a summary: argmax shares and prevalence with CIs


def classify_file(
    input: Path,
    out: Path,
    cfg: ClassifierConfig,
    summary: Path | None = None,
    batch_size: int = 16,
    bootstrap: int = 1000,
) -> ClassifyResult:
    """Political leaning of any article file; with `summary`, the file's label shares corrected for
    the classifier's confusion (written as JSON)."""
    from biasamp.corpus import read_table, text_column
    from biasamp.instruments import load_classifier
    from biasamp.instruments.hf import leaning
    from biasamp.instruments.prevalence import UNCORRECTED
    from biasamp.stages.summarize import summarize
    from biasamp.tables import write_parquet
    from biasamp.text import training_text

    artifacts.check_output_path(out, "file")
    if summary is not None:
        artifacts.check_output_path(summary, "file", "--summary")
    df = read_table(input)
    if "text" not in df.columns:
        raise ValueError(f"{input}: no 'text' column (has: {', '.join(map(str, df.columns))})")
    clf = load_classifier(cfg.kind, cfg.name, cfg.labels, cfg.max_tokens, ModelConfig(), "classifier")
    cal = load_calibration(cfg) if summary is not None else None
    if summary is not None and cal is None and cfg.prevalence not in UNCORRECTED:
        raise ValueError(
            "--summary with --kind hf needs --calibration (biasamp classifier eval --kind hf "
            "--calibration-out FILE makes one) or --method cc"
        )
    titles = text_column(df, "title", str(input)) if "title" in df.columns else None
    texts = text_column(df, "text", str(input))
    # With a title, the article is read as the study models write it; without, as plain text.
    inputs = [training_text(t, b) for t, b in zip(titles, texts)] if titles is not None else list(texts)
    result = leaning(clf, inputs, batch_size)
    ids = df["article_id"].astype(str) if "article_id" in df.columns else pd.Series(range(len(df))).astype(str)
    keep = df.drop(columns=[c for c in [*result.columns, "article_id"] if c in df.columns]).reset_index(drop=True)
    result = pd.concat([pd.DataFrame({"article_id": ids.to_numpy()}), keep, result], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(result, out)
    if summary is None:
        return ClassifyResult(result, None)
    row = summarize(
        result.assign(study="", arm="", seed=0, generation=0, ppl=float("nan"), ppl_ref=float("nan")),
        bootstrap,
        calibration=cal,
        method=cfg.prevalence,
    )[0].iloc[0]
    labs = ("left", "center", "right")
    shares = {
        "n": len(result),
        "method": cfg.prevalence,
        "argmax_share": {lab: float(row[f"share_{lab}"]) for lab in labs},
        "prevalence": {
            lab: {
                "estimate": float(row[f"prev_{lab}"]),
                "lo": float(row[f"prev_{lab}_lo"]),
                "hi": float(row[f"prev_{lab}_hi"]),
            }
            for lab in labs
        },
    }
    artifacts.write_json(shares, summary)
    return ClassifyResult(result, shares)


def evaluate_classifier(
    data: Path,
    exclude_study: list[Path],
    hub: ClassifierConfig | None,
    repeats: int,
    out: Path | None = None,
    calibration_out: Path | None = None,
    log=print,
) -> tuple[dict, pd.DataFrame | None]:
    """Leave-outlets-out evaluation of the shipped recipe beside a plain TF-IDF baseline fitted in
    the same run (and of the `hub` classifier as it is, whose calibration table goes to
    `calibration_out`); returns the report, also written to `out` with the benchmark rows beside it,
    and the calibration table."""
    from biasamp.instruments import load_classifier
    from biasamp.instruments.leaning import evaluate, study_article_ids
    from biasamp.instruments.prevalence import calibration_table

    for path, flag in ((out, "--out"), (calibration_out, "--calibration-out")):
        if path is not None:
            artifacts.check_output_path(path, "file", flag)
    extra = {}
    if hub is not None:
        extra[hub.name] = load_classifier(hub.kind, hub.name, hub.labels, hub.max_tokens, ModelConfig(), "classifier")
    report, bench, probs, pool = evaluate(data, study_article_ids(exclude_study), extra, repeats, log=log)
    if out is not None:
        artifacts.write_json(report, out)
        write_parquet(bench, out.with_suffix(".prevalence.parquet"))
    cal = None
    if calibration_out is not None:
        cal = calibration_table(probs[hub.name], pool["source_label"], pool["outlet"])
        write_parquet(cal, calibration_out)
    return report, cal


@dataclass
class CheckResult:
    table: pd.DataFrame  # per degradation and reading: the shift from intact, with its CI
    text: str  # the Markdown table


def check_classifier(
    cfg: ClassifierConfig,
    articles: Path | None,
    data: Path,
    per_label: int,
    seed: int,
    bootstrap: int,
    batch_size: int,
    out: Path | None = None,
    pool: pd.DataFrame | None = None,
) -> CheckResult:
    """Does the leaning instrument read text degradation as a leaning? (biasamp.instruments.invariance)
    On `pool` (labelled articles, e.g. study_articles) where given."""
    from biasamp.corpus import read_source
    from biasamp.instruments import invariance, load_classifier
    from biasamp.instruments.leaning import LeaningModel
    from biasamp.instruments.prevalence import UNCORRECTED
    from biasamp.tables import write_parquet

    if out is not None:
        artifacts.check_output_path(out, "file")
    if pool is None and articles is not None:
        pool = read_source(str(articles))
    elif pool is None:
        seen = LeaningModel.load("bundled").outlets
        if not len(seen):
            raise ValueError("the shipped leaning model records no training outlets: pass --articles")
        pool = invariance.unseen_articles(read_source(str(data)), seen, per_label, seed)
    pool = pool.groupby("source_label").head(per_label).reset_index(drop=True)
    if pool.empty:
        raise ValueError(f"{articles or data}: no labelled articles to check on")
    clf = load_classifier(cfg.kind, cfg.name, cfg.labels, cfg.max_tokens, ModelConfig(), "classifier")
    method = cfg.prevalence
    cal = load_calibration(cfg) if method not in UNCORRECTED else None
    if cal is None and method not in UNCORRECTED:
        raise ValueError(f"--method {method}: needs --calibration for --kind {cfg.kind}")
    probs = invariance.readings(clf, pool, batch_size, cfg.read)
    table = invariance.shift_table(probs, method, cal, bootstrap, seed, labels=pool["source_label"])
    counts = pool["source_label"].value_counts().to_dict()
    text = invariance.render(
        table, invariance.macro_f1(probs["intact"], pool["source_label"]), counts, f"{cfg.kind}:{cfg.name}"
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        write_parquet(table, out.with_suffix(".parquet"))
    return CheckResult(table, text)


def study_articles(source: Path) -> pd.DataFrame:
    """The real articles of a study: a study folder's corpus tables, or the corpora a config draws."""
    from biasamp.corpus import read_source, sample_corpus

    source = Path(source)
    if source.is_dir():
        if not artifacts.is_study_folder(source):
            raise ValueError(f"--study {source}: not a study folder (no manifest.json)")
        where = TABLES["corpus"].where(source)
        files = sorted(where.glob("*.parquet")) if where.is_dir() else []
        if not files:
            raise ValueError(f"--study {source}: no corpus tables under {where}")
        parts = [pd.read_parquet(f) for f in files]
    else:
        cfg = load_config(source)
        parts = [sample_corpus(read_source(c.source), c, name) for name, c in cfg.corpora.items()]
    return pd.concat(parts, ignore_index=True).drop_duplicates("article_id").reset_index(drop=True)


@dataclass
class ChangeResult:
    readings: dict  # reading -> {"raw" | "beyond_null" | "calibrated": {estimate, lo, hi}}
    text: str


def leaning_change(
    before: Path,
    after: Path,
    out: Path,
    cfg: ClassifierConfig,
    reference: Path | None = None,
    data: Path = Path("../shared/data/article-bias-prediction"),
    per_label: int = 300,
    bootstrap: int = 1000,
    batch_size: int = 16,
    seed: int = 0,
) -> ChangeResult:
    """The change of leaning from BEFORE (real articles) to AFTER (articles continuing their ids),
    raw, beyond the degradation null and calibrated to AFTER's decay: a study's own computation
    (score.change_scores, analyze.arm_contrasts) for any two article files. Calibration articles:
    BEFORE's labels where it has them, and `reference`'s; with neither, the shipped classifier's
    held-out check articles (of `data`, as `biasamp classifier check`)."""
    from biasamp.corpus import read_source
    from biasamp.instruments import invariance, load_classifier
    from biasamp.instruments.leaning import LeaningModel
    from biasamp.instruments.prevalence import READINGS
    from biasamp.stages.analyze import arm_contrasts
    from biasamp.stages.score import change_scores

    artifacts.check_output_path(out, "file")
    first, then = read_source(str(before), labelled=False), read_source(str(after), labelled=False)
    for name, path, part in (("BEFORE", before, first), ("AFTER", after, then)):
        if part.empty:
            raise ValueError(f"{name} {path}: no articles")
    unknown = sorted(set(then["article_id"]) - set(first["article_id"]))
    if unknown:
        raise ValueError(
            f"AFTER {after}: {len(unknown)} article id(s) not in BEFORE (e.g. {unknown[0]!r}); AFTER continues "
            "BEFORE's articles, id for id"
        )
    labelled = (first["source_label"] != "").all()
    ref = None
    if reference is not None:
        ref = read_source(str(reference))
    elif not labelled:
        seen = LeaningModel.load("bundled").outlets
        ref = invariance.unseen_articles(read_source(str(data)), seen, per_label, seed)
    clf = load_classifier(cfg.kind, cfg.name, cfg.labels, cfg.max_tokens, ModelConfig(), "classifier")
    scores = change_scores(clf, first, then, ref, batch_size, cfg.read, seed)
    trends = arm_contrasts(scores, n_boot=bootstrap, seed=seed)[1].set_index("target")
    readings = {}
    for r in READINGS:
        readings[r] = {
            kind: {
                k: float(trends.loc[target, c])
                for k, c in (("estimate", "change"), ("lo", "change_lo"), ("hi", "change_hi"))
            }
            for kind, target in (("raw", r), ("beyond_null", f"{r}_beyond_null"), ("calibrated", f"{r}_calibrated"))
        }
    calibration = "BEFORE's labels" if labelled else ""
    if ref is not None:
        calibration += (" and " if calibration else "") + f"{len(ref)} labelled articles of {reference or data}"
    artifacts.write_json(
        {
            "before": str(before),
            "after": str(after),
            "articles": {"before": len(first), "after": len(then)},
            "calibration": calibration,
            "classifier": f"{cfg.kind}:{cfg.name}",
            "read": cfg.read,
            "bootstrap": bootstrap,
            "readings": readings,
        },
        out,
    )
    lines = [
        f"leaning change from BEFORE ({len(first)} articles) to AFTER ({len(then)}), {cfg.kind}:{cfg.name} "
        f"reading {cfg.read.replace('_', ' + ')}; "
        f"calibrated on {calibration}; 95% CIs ({bootstrap} draws, paired by article id)",
        f"  {'reading':14} {'raw':>24} {'beyond the null':>24} {'calibrated':>24}",
    ]
    for r, kinds in readings.items():
        cells = [f"{v['estimate']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}]" for v in kinds.values()]
        lines.append(f"  {r:14} " + " ".join(f"{c:>24}" for c in cells))
    lines.append(f"-> {out}")
    return ChangeResult(readings, "\n".join(lines))
