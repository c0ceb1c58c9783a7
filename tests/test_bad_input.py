"""Bad input, as a new user meets it: each case is a real `biasamp` command on a malformed config,
corpus, model, manifest, path or flag. Each must end with exit 2 and one line on stderr naming
what is wrong, no traceback, before Ray starts, nothing written outside --out and nothing already
in --out changed.

Each case is its own process (its exit code, file descriptors 1 and 2, working folder and
environment), forked from one that imported the command line once (multiprocessing's forkserver with
the CLI preloaded): a case then starts in milliseconds, not in the seconds of importing torch, pandas
and pydantic again. The cases in SUBPROCESS also run from a fresh
interpreter (the `biasamp` console script), and their forked run must say exactly what that one says."""

import gzip
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from conftest import built_once, cli, folder_tree

from biasamp.config import load_config

ROOT = Path(__file__).parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
CORPUS = "--set=corpora.main.source={tmp}/corpus"  # a corpus file the case writes
FIFO = object()  # a file a case makes as a named pipe
_ROWS = "".join(json.dumps({"text": f"article {i} " * 40, "label": "left"}) + "\n" for i in range(200)).encode()
GZIP_CUT = gzip.compress(_ROWS)[:300]  # a .gz whose stream ends early (a copy cut short)
# A study folder as far as another command's --out is concerned: its manifest and a table folder.
STUDY_FOLDER = {
    "study/manifest.json": "{}",
    "study/scores/a__seed0__gen0.parquet": "x",
    "study/summary_arms.parquet": "x",
}


def _run(*flags):  # `biasamp run` of the smoke study into {tmp}/out with these overrides
    return ["run", SMOKE, "--out", "{tmp}/out", *(f"--set={f}" for f in flags)]


def _parquet(**columns) -> bytes:
    buf = io.BytesIO()
    pd.DataFrame(columns).to_parquet(buf)
    return buf.getvalue()


FOREIGN_TABLE = _parquet(x=[1, 2])  # a Parquet file of another tool: readable, none of our columns
_SMOKE = load_config(SMOKE)
# The smoke study's manifest, as `run` records it, and which generations and seeds are on disk.
SMOKE_ON_DISK = {
    "out/manifest.json": json.dumps(
        {"study": _SMOKE.study, "science_hash": _SMOKE.science_hash(), "config": _SMOKE.model_dump(mode="json")}
    ),
    **{f"out/articles/{arm}__seed{s}__gen{g}.parquet": "x" for arm in _SMOKE.arms for s in (0, 1) for g in (0, 1, 2)},
}


class Link(str):
    """A file a case makes as a symbolic link to this target."""


# A "billion laughs": 10 levels of 10 aliases each, 10**10 values once expanded, in 400 bytes.
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefghi", "bcdefghij")
)


# (id, files the case writes under {tmp} first, the command, what its one line must say)
CASES = [
    # the config file
    ("config missing", {}, ["validate", "{tmp}/nope.yaml"], "nope.yaml: no such file"),
    ("config is a folder", {"conf/x": ""}, ["validate", "{tmp}/conf"], "conf: a folder, not a config file"),
    (
        "config is binary",
        {"c.yaml": b"\xff\xfe\x00\x81study"},
        ["validate", "{tmp}/c.yaml"],
        "c.yaml: not a UTF-8 text file",
    ),
    ("config not YAML", {"c.yaml": "study: [smoke"}, ["validate", "{tmp}/c.yaml"], "c.yaml: not valid YAML"),
    ("config empty", {"c.yaml": ""}, ["validate", "{tmp}/c.yaml"], "c.yaml: the top level must be a mapping"),
    (
        "config key twice",
        {"c.yaml": "study: a\ngenerations: 2\ntrain:\n  lr: 0.1\n  lr: 0.2\n"},
        ["validate", "{tmp}/c.yaml"],
        "c.yaml: line 5: key 'lr' appears twice in one mapping",
    ),
    # the shape of a YAML document (config file or --set value), refused before it is built
    (
        "config of nested aliases",
        {"c.yaml": LAUGHS},
        ["validate", "--config-only", "{tmp}/c.yaml"],
        "c.yaml: line 4: expands to more than 10,000 values (each use of an alias counts)",
    ),
    (
        "config nested 5,000 deep",
        {"c.yaml": "study: " + "[" * 5000 + "]" * 5000},
        ["validate", "--config-only", "{tmp}/c.yaml"],
        "c.yaml: nested deeper than 32 levels",
    ),
    (
        "config alias inside itself",
        {"c.yaml": "study: &a [*a]\n"},
        ["validate", "--config-only", "{tmp}/c.yaml"],
        "c.yaml: line 1: an alias used inside its own anchor",
    ),
    (
        "config key a list",
        {"c.yaml": "study: a\n? [train, lr]\n: 0.1\n"},
        ["validate", "--config-only", "{tmp}/c.yaml"],
        "c.yaml: line 2: a key must be a name, not a list",
    ),
    ("--set key twice", {}, _run("train={lr: 0.1, lr: 0.2}"), "--set train: line 1: key 'lr' appears twice"),
    ("--set nested deep", {}, _run("train=" + "[" * 3000 + "]" * 3000), "--set train: nested deeper than 32 levels"),
    (
        "--set of nested aliases",
        {},
        _run("sweep={key: train.lr, values: &v [" + ", ".join(["1e-3"] * 11000) + "]}"),
        "--set sweep: line 1: expands to more than 10,000 values",
    ),
    (
        "--set value of 50,000 characters",
        {},
        _run("arms.synthetic.corpus='" + "x" * 50_000 + "'"),
        "arms.synthetic.corpus: '" + "x" * 199 + "... (50002 characters) is not in corpora (main)",
    ),
    ("infinite lr", {}, _run("train.lr=.inf"), "train.lr: Input should be a finite number"),
    (
        "more CPU engines than cores",
        {},
        _run("generation.backend={kind: vllm, engines: 2}"),
        "generation.backend.engines: 2 CPU engines share the trajectory's 1 CPUs",
    ),
    ("NaN epochs", {}, _run("train.epochs=.nan"), "train.epochs: Input should be a finite number"),
    ("generations a boolean", {}, _run("generations=true"), "generations: a number, not true or false"),
    ("epochs a boolean", {}, _run("train.epochs=false"), "train.epochs: a number, not true or false"),
    (
        "config is a list",
        {"c.yaml": "- study\n- smoke\n"},
        ["validate", "{tmp}/c.yaml"],
        "the top level must be a mapping",
    ),
    (
        "config list + --set",
        {"c.yaml": "- a\n"},
        ["validate", "{tmp}/c.yaml", "--set", "train.lr=1"],
        "the top level must be a mapping",
    ),
    ("--set without =", {}, ["validate", SMOKE, "--set", "train.lr"], "--set train.lr: expected KEY.PATH=VALUE"),
    ("--set value not YAML", {}, ["validate", SMOKE, "--set", "train.lr=[1"], "the value is not valid YAML"),
    ("--set through a scalar", {}, ["validate", SMOKE, "--set", "study.x=1"], "'study' is not a mapping"),
    ("unknown key", {}, ["validate", SMOKE, "--set", "trian.lr=1"], "trian: unknown key (did you mean 'train'?)"),
    ("bad study name", {}, _run("study=a/b"), "study: String should match pattern"),
    ("no generations", {}, _run("generations=0"), "generations: Input should be greater than or equal to 1"),
    ("absurd generations", {}, _run("generations=1000000000"), "generations: Input should be less than or equal to"),
    ("negative seed", {}, _run("seeds=[-1]"), "seeds.0: Input should be greater than or equal to 0"),
    ("no seeds", {}, _run("seeds=[]"), "seeds: need at least one seed"),
    ("repeated seeds", {}, _run("seeds=[1,1]"), "seeds: need at least one seed, no repeats"),
    ("no arms", {}, ["validate", SMOKE, "--set", "arms={}"], "arms: at least one arm is needed"),
    ("arm is a number", {}, _run("arms.synthetic=3"), "arms.synthetic: Input should be a valid dictionary"),
    ("unknown mix", {}, _run("arms.synthetic.mix=blend"), "arms.synthetic.mix: Input tag 'blend' found"),
    (
        "real_fraction > 1",
        {},
        _run("arms.preservation.mix.real_fraction=1.5"),
        "real_fraction: Input should be less than or equal to 1",
    ),
    ("setting of another mix", {}, _run("arms.synthetic.mix.real_fraction=0.5"), "not a setting of this mix kind"),
    ("negative lr", {}, _run("train.lr=-1"), "train.lr: Input should be greater than or equal to 0.000000001"),
    ("vanishing lr", {}, _run("train.lr=1e-300"), "train.lr: Input should be greater than or equal to 0.000000001"),
    ("absurd epochs", {}, _run("train.epochs=1e9"), "train.epochs: Input should be less than or equal to"),
    ("arm corpus unknown", {}, _run("arms.synthetic.corpus=other"), "arms.synthetic.corpus: 'other' is not in corpora"),
    # model limits
    (
        "max_length beyond positions",
        {},
        _run("train.max_length=512"),
        "train.max_length: 512 tokens, but the model has 256 positions",
    ),
    (
        "probe beyond positions",
        {},
        _run("neurons.max_length=1024"),
        "neurons.max_length: 1024 tokens, but the model has 256 positions",
    ),
    ("generation beyond positions", {}, _run("generation.new_tokens=250"), "generation: a prompt of up to"),
    # corpora
    ("corpus missing", {}, _run("corpora.main.source={tmp}/no-such.jsonl"), "no-such.jsonl: no such file or folder"),
    ("corpus format unknown", {"corpus": "x"}, [*_run(), CORPUS], "corpus: unknown format"),
    (
        "corpus without text",
        {"c.csv": "title,label\na,left\n"},
        _run("corpora.main.source={tmp}/c.csv"),
        "c.csv: no text column",
    ),
    (
        "corpus line not JSON",
        {"c.jsonl": '{"text": "a", "label": "left"}\n{oops\n'},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "c.jsonl: line 2 is not JSON",
    ),
    (
        "corpus bad label",
        {"c.csv": "text,label\na,up\n"},
        _run("corpora.main.source={tmp}/c.csv"),
        "c.csv: label 'up' is not left/center/right",
    ),
    (
        "corpus too small",
        {},
        _run("corpora.main.per_label.left=100000"),
        "corpora.main.per_label.left: asks 100000 articles",
    ),
    (
        "corpus folder empty",
        {"empty/x.txt": ""},
        _run("corpora.main.source={tmp}/empty"),
        "empty: no articles.jsonl.gz or *.json files",
    ),
    # models and instruments
    (
        "hub model not cached",
        {},
        _run("model.kind=hf", "model.name=nobody/no-such-model", "model.tokenizer=null"),
        "model.name: 'nobody/no-such-model' is not available",
    ),
    (
        "model folder missing",
        {},
        _run("model.kind=hf", "model.name={tmp}/no-model", "model.tokenizer=null"),
        "model.name:",
    ),
    (
        "gguf without file",
        {"m/x": ""},
        _run("model.kind=gguf", "model.name={tmp}/m", "model.tokenizer=null"),
        "model.gguf_file: needed",
    ),
    ("tokenizer missing", {}, _run("model.tokenizer={tmp}/no-tok"), "model.tokenizer: '{tmp}/no-tok' is not available"),
    (
        "unknown architecture",
        {},
        _run("model.kind=architecture", "model.name=qwen-9b"),
        "model.name: 'qwen-9b' is neither a shipped architecture (gpt2, llama-3.2-1b,",
    ),
    (
        "architecture override of another family",
        {},
        _run("model.kind=architecture", "model.name=qwen2.5-0.5b", "model.overrides={n_layer: 2}"),
        "model.overrides: 'n_layer' is not a field of qwen2 configs",
    ),
    ("overrides on a hub model", {}, _run("model.overrides={n_layer: 2}"), "overrides: only kind architecture"),
    (
        "offline kind with hub id",
        {},
        _run("scoring.classifier.kind=offline", "scoring.classifier.name=wu981526092/bias_classifier_roberta"),
        "scoring.classifier.name: 'wu981526092/bias_classifier_roberta' looks like a hub id",
    ),
    (
        "offline classifier missing",
        {},
        _run("scoring.classifier.kind=offline", "scoring.classifier.name={tmp}/clf.npz"),
        "scoring.classifier.name: {tmp}/clf.npz: no such file",
    ),
    (
        "hub classifier not cached",
        {},
        _run("scoring.classifier.kind=hf", "scoring.classifier.name=nobody/no-clf"),
        "scoring.classifier.name: 'nobody/no-clf' is not available",
    ),
    (
        "quality proxy missing",
        {},
        _run("scoring.quality.kind=offline", "scoring.quality.name={tmp}/q.npz"),
        "scoring.quality.name: {tmp}/q.npz: no such file",
    ),
    (
        "calibration missing",
        {},
        _run("scoring.classifier.kind=offline", "scoring.classifier.calibration={tmp}/cal.parquet"),
        "scoring.classifier.calibration: {tmp}/cal.parquet: no such file",
    ),
    # resources, before Ray
    (
        "too many CPUs",
        {},
        _run("resources.cpus_per_trajectory=4096"),
        "resources.cpus_per_trajectory: a trajectory asks for 4096 CPU",
    ),
    (
        "GPUs on a CPU machine",
        {},
        _run("resources.gpus_per_trajectory=1"),
        "resources.gpus_per_trajectory: a trajectory asks for 1 GPU",
    ),
    # output folders
    ("--out is a file", {"out": "x"}, _run(), "{tmp}/out: a file, not a folder"),
    ("--out below a file", {"f": "x"}, ["run", SMOKE, "--out", "{tmp}/f/out"], "{tmp}/f: a file, not a folder"),
    ("--out not writable", {}, ["run", SMOKE, "--out", "/sys/biasamp-out"], "/sys: cannot write here"),
    (
        "--out holds another study",
        {"out/manifest.json": json.dumps({"study": "smoke", "science_hash": "0" * 16, "config": {}})},
        _run(),
        "differs in",
    ),
    ("--out manifest not JSON", {"out/manifest.json": "{oops"}, _run(), "{tmp}/out/manifest.json: not JSON"),
    (
        "score: manifest not JSON",
        {"out/manifest.json": "{oops"},
        ["score", "{tmp}/out"],
        "{tmp}/out/manifest.json: not JSON",
    ),
    (
        "score: manifest without config",
        {"out/manifest.json": "{}"},
        ["score", "{tmp}/out"],
        "{tmp}/out/manifest.json: no 'config' key",
    ),
    ("score: not a study", {"out/x": ""}, ["score", "{tmp}/out"], "manifest.json not found: not a study folder"),
    ("analyze: no folder", {}, ["analyze", "{tmp}/nothing"], "{tmp}/nothing: no such folder"),
    ("status: not a study", {"out/x": ""}, ["status", "{tmp}/out"], "{tmp}/out/manifest.json not found: not a study"),
    ("status: --as-of not a time", {}, ["status", "{tmp}", "--as-of", "noon"], "'noon' is not a time such as"),
    ("analyze: nothing to analyze", {"out/x": ""}, ["analyze", "{tmp}/out"], "has neither neurons/ nor scores"),
    (
        "report: no study",
        {},
        ["report", "{tmp}/nothing", "--out", "{tmp}/rep"],
        "{tmp}/nothing: no summary_arms.parquet",
    ),
    # output paths that would clobber a study (its tables unreadable afterwards) or mistake a folder for a file
    (
        "report into a study's tables",
        STUDY_FOLDER,
        ["report", "{tmp}/study", "--out", "{tmp}/study/scores"],
        "--out {tmp}/study/scores: inside the study folder",
    ),
    (
        "report into a study's articles",
        STUDY_FOLDER,
        ["report", "{tmp}/study", "--out", "{tmp}/study/articles/rep"],
        "--out {tmp}/study/articles/rep: inside the study folder",
    ),
    (
        "report onto a file",
        {**STUDY_FOLDER, "rep": "x"},
        ["report", "{tmp}/study", "--out", "{tmp}/rep"],
        "--out {tmp}/rep: a file; a folder is written here",
    ),
    (
        "classify into a study's scores",
        {**STUDY_FOLDER, "a.csv": "text\nhello\n"},
        ["classify", "{tmp}/a.csv", "--out", "{tmp}/study/scores/b.parquet"],
        "inside the study folder",
    ),
    (
        "classify onto a folder",
        {"a.csv": "text\nhello\n", "o/keep": "x"},
        ["classify", "{tmp}/a.csv", "--out", "{tmp}/o"],
        "--out {tmp}/o: a folder; a file is written here",
    ),
    (
        "prepare into a study's corpus folder",
        STUDY_FOLDER,
        ["data", "prepare", "bundled", "--out", "{tmp}/study/corpus/main.parquet", "--per-label", "2"],
        "inside the study folder",
    ),
    (
        "simulate onto a file",
        {"sim": "x"},
        ["simulate", "--out", "{tmp}/sim", "--generations", "2"],
        "--out {tmp}/sim: a file; a folder is written here",
    ),
    (
        "classify: no file",
        {},
        ["classify", "{tmp}/a.csv", "--out", "{tmp}/o.parquet"],
        "a.csv: No such file or directory",
    ),
    # rows that are not objects of fields
    (
        "corpus row a number",
        {"c.jsonl": '{"text": "a", "label": "left"}\n42\n'},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "c.jsonl: line 2 is a number, not an object of fields",
    ),
    (
        "corpus row an array",
        {"c.jsonl.gz": gzip.compress(b'["a", "left"]\n')},
        _run("corpora.main.source={tmp}/c.jsonl.gz"),
        "c.jsonl.gz: line 1 is an array, not an object of fields",
    ),
    (
        "classify: a row null",
        {"a.jsonl": '{"text": "a"}\nnull\n'},
        ["classify", "{tmp}/a.jsonl", "--out", "{tmp}/o.parquet"],
        "a.jsonl: line 2 is null, not an object of fields",
    ),
    (
        "classify: JSON of strings",
        {"a.json": '["a", "b"]'},
        ["classify", "{tmp}/a.json", "--out", "{tmp}/o.parquet"],
        "a.json: item 0 is a string, not an object of fields",
    ),
    (
        "classify: no text column",
        {"a.csv": "title\nx\n"},
        ["classify", "{tmp}/a.csv", "--out", "{tmp}/o.parquet"],
        "a.csv: no 'text' column",
    ),
    ("import-paper: no folder", {}, ["import-paper", "{tmp}/nothing", "--out", "{tmp}/p"], "{tmp}/nothing"),
    # limits: values no study can mean, refused before anything runs
    ("seed beyond the seeding", {}, _run("seeds=[50000]"), "seeds.0: Input should be less than or equal to"),
    ("corpus seed negative", {}, _run("corpora.main.seed=-1"), "corpora.main.seed: Input should be greater than"),
    (
        "heads do not divide width",
        {},
        _run("model.tiny.n_head=3"),
        "model.tiny: n_embd 64 is not a multiple of n_head 3",
    ),
    ("absurd model width", {}, _run("model.tiny.n_embd=1000000"), "model.tiny.n_embd: Input should be less than"),
    ("CPU below Ray's grain", {}, _run("resources.cpus_per_trajectory=0.00001"), "resources.cpus_per_trajectory:"),
    ("GPU below Ray's grain", {}, _run("resources.gpus_per_trajectory=0.00001"), "Ray cannot schedule 1e-05"),
    ("worker CPU below Ray's grain", {}, _run("train.deepspeed.cpus_per_worker=0"), "cpus_per_worker: Input should be"),
    ("absurd DeepSpeed workers", {}, _run("train.deepspeed.workers=100000"), "workers: Input should be less than"),
    (
        "out_dir unknown placeholder",
        {},
        ["validate", SMOKE, "--set", "out_dir=/x/{bogus}"],
        "may hold only the placeholder",
    ),
    ("out_dir lone brace", {}, ["validate", SMOKE, "--set", "out_dir=/x/{"], "out_dir: '/x/{' may hold only"),
    ("study name too long", {}, _run("study=" + "a" * 200), "study: String should have at most 128 characters"),
    ("arm name too long", {}, _run("arms={" + "b" * 80 + ": {}}"), "a name of 80 characters; at most 64"),
    ("arm name with a slash", {}, _run("arms={a/b: {}}"), "arms.a/b: names are letters, digits"),
    ("corpus name with a space", {}, ["validate", SMOKE, "--set", "corpora={my corpus: {}}"], "names are letters"),
    ("huge lr", {}, _run("train.lr=1e9"), "train.lr: Input should be less than or equal to 10"),
    ("weight decay past 1", {}, _run("train.weight_decay=5"), "train.weight_decay: Input should be less than"),
    ("absurd generation batch", {}, _run("generation.batch_size=10000000"), "generation.batch_size: Input should be"),
    ("zero scoring batch", {}, _run("scoring.batch_size=0"), "scoring.batch_size: Input should be greater"),
    ("absurd new tokens", {}, _run("generation.new_tokens=100000000"), "generation.new_tokens: Input should be less"),
    ("absurd probe batch", {}, _run("neurons.batch_size=10000000"), "neurons.batch_size: Input should be less"),
    ("negative epochs", {}, _run("train.epochs=-1"), "train.epochs: Input should be greater than 0"),
    (
        "keep_checkpoints unknown",
        {},
        _run("keep_checkpoints=some"),
        "keep_checkpoints: Input should be 'all' or 'last'",
    ),
    ("wandb mode unknown", {}, _run("wandb.mode=cloud"), "wandb.mode: Input should be"),
    ("generation dtype unknown", {}, _run("generation.dtype=float16"), "generation.dtype: Input should be"),
    ("train backend unknown", {}, _run("train.backend=horovod"), "train.backend: Input should be 'plain' or"),
    ("ffn module alone", {}, _run("neurons.ffn_module=h.{layer}.mlp"), "give both ffn_module and block_module"),
    (
        "module without {layer}",
        {},
        _run("neurons.ffn_module=h.mlp", "neurons.block_module=h.{layer}"),
        "'h.mlp' needs a {layer} placeholder",
    ),
    ("classifier labels incomplete", {}, _run("scoring.classifier.labels={A: left}"), "labels must map model labels"),
    ("quality level 5", {}, _run("scoring.quality.labels={x: 5}"), "labels map onto levels 0..3"),
    ("years reversed", {}, _run("corpora.main.years=[2020,2010]"), "years 2020 > 2010"),
    ("no label counts", {}, _run("corpora.main.per_label={left: 0}"), "per_label needs at least one label"),
    ("baseline not an arm", {}, _run("analysis.baseline_arm=nope"), "analysis.baseline_arm: 'nope' is not an arm"),
    ("probe not a corpus", {}, _run("neurons.probe=nope"), "neurons.probe: 'nope' is not in corpora"),
    (
        "curation without scores",
        {},
        _run("scoring.enabled=false"),
        "reads the classifier's scores of D_(g-1); it needs scoring.enabled: true",
    ),
    ("study name null", {}, ["validate", SMOKE, "--set", "study="], "study: Input should be a valid string"),
    (
        "neuron modules not in the model",
        {},
        _run("neurons.ffn_module=foo.{layer}", "neurons.block_module=bar.{layer}"),
        "neurons.ffn_module: no module named foo.0",
    ),
    # files that are not what they say, or not files
    ("config is a FIFO", {"c.yaml": FIFO}, ["validate", "{tmp}/c.yaml"], "c.yaml: a FIFO, not a regular file"),
    ("corpus is a FIFO", {"c.jsonl": FIFO}, _run("corpora.main.source={tmp}/c.jsonl"), "c.jsonl: a FIFO, not a"),
    ("corpus is a device", {}, _run("corpora.main.source=/dev/zero"), "/dev/zero: a device, not a regular file"),
    ("corpus gzip cut short", {"c.jsonl.gz": GZIP_CUT}, _run("corpora.main.source={tmp}/c.jsonl.gz"), "cut short"),
    (
        "corpus .gz not gzip",
        {"c.jsonl.gz": '{"text": "a", "label": "left"}\n'},
        _run("corpora.main.source={tmp}/c.jsonl.gz"),
        "c.jsonl.gz: not gzip-compressed",
    ),
    (
        "corpus gzip named .jsonl",
        {"c.jsonl": gzip.compress(b'{"text": "a", "label": "left"}\n')},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "c.jsonl: not UTF-8 text",
    ),
    ("corpus JSON broken", {"c.json": '{"text": , }'}, _run("corpora.main.source={tmp}/c.json"), "c.json: Expecting"),
    ("corpus not Parquet", {"c.parquet": "not parquet"}, _run("corpora.main.source={tmp}/c.parquet"), "c.parquet:"),
    ("corpus CSV quote open", {"c.csv": 'text,label\n"a,left\n'}, _run("corpora.main.source={tmp}/c.csv"), "c.csv:"),
    (
        "corpus folder, one file broken",
        {"jsons/a.json": '{"text": "a", "bias_text": "left"}', "jsons/b.json": "{"},
        _run("corpora.main.source={tmp}/jsons"),
        "b.json: not a JSON file",
    ),
    (
        "corpus ids repeated",
        {"c.jsonl": "".join(json.dumps({"id": i % 2, "text": f"t{i}", "label": "left"}) + "\n" for i in range(4))},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "c.jsonl: article id '0' is on more than one row (2 ids repeated, 4 rows)",
    ),
    (
        "corpus label a bool",
        {"c.jsonl": '{"text": "a", "label": true}\n'},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "c.jsonl: label True is a bool",
    ),
    (
        "corpus label a list",
        {"c.jsonl": '{"text": "a", "label": ["left"]}\n'},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "c.jsonl: label ['left'] is a list",
    ),
    (
        "corpus label a float",
        {"c.jsonl": '{"text": "a", "label": 1.5}\n'},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "c.jsonl: label 1.5 is a float",
    ),
    ("classify: input is a FIFO", {"a.jsonl": FIFO}, ["classify", "{tmp}/a.jsonl", "--out", "{tmp}/o.parquet"], "FIFO"),
    (
        "classify: input cut short",
        {"a.jsonl.gz": GZIP_CUT},
        ["classify", "{tmp}/a.jsonl.gz", "--out", "{tmp}/o.parquet"],
        "a.jsonl.gz: cut short",
    ),
    (
        "classify onto a device",
        {"a.csv": "text\nhello\n"},
        ["classify", "{tmp}/a.csv", "--out", "/dev/null"],
        "--out /dev/null: a device, not a regular file",
    ),
    (
        "classify onto a FIFO",
        {"a.csv": "text\nhello\n", "o": FIFO},
        ["classify", "{tmp}/a.csv", "--out", "{tmp}/o"],
        "FIFO",
    ),
    ("score: manifest a FIFO", {"out/manifest.json": FIFO}, ["score", "{tmp}/out"], "manifest.json: a FIFO"),
    (
        "report: summary damaged",
        {"study/manifest.json": "{}", "study/summary_arms.parquet": "garbage"},
        ["report", "{tmp}/study", "--out", "{tmp}/rep"],
        "summary_arms.parquet",
    ),
    (
        "analyze: scores damaged",
        {"study/scores/a__seed0__gen0.parquet": "garbage"},
        ["analyze", "{tmp}/study"],
        "a__seed0__gen0.parquet",
    ),
    (
        "data prepare: source cut short",
        {"c.jsonl.gz": GZIP_CUT},
        ["data", "prepare", "{tmp}/c.jsonl.gz", "--out", "{tmp}/o.parquet", "--per-label", "1"],
        "c.jsonl.gz: cut short",
    ),
    (
        "data prepare: negative count",
        {},
        ["data", "prepare", "bundled", "--out", "{tmp}/o.parquet", "--per-label", "left=-1"],
        "--per-label: per_label needs at least one label with a positive count",
    ),
    (
        "data prepare: one year",
        {},
        ["data", "prepare", "bundled", "--out", "{tmp}/o.parquet", "--years", "2020"],
        "--years 2020: expected FROM-TO",
    ),
    (
        "data prepare: years reversed",
        {},
        ["data", "prepare", "bundled", "--out", "{tmp}/o.parquet", "--years", "2020-2010"],
        "--years: years 2020 > 2010",
    ),
    (
        "data prepare: unknown suffix",
        {},
        ["data", "prepare", "bundled", "--out", "{tmp}/o.txt"],
        "--out {tmp}/o.txt: a corpus is written as .parquet or .jsonl.gz",
    ),
    (
        "quality eval: proxy not a proxy",
        {"q.npz": "not numpy"},
        ["quality", "eval", "--proxy", "{tmp}/q.npz"],
        "q.npz: not a quality proxy file",
    ),
    (
        "data prepare onto a folder",
        {"o/keep": "x"},
        ["data", "prepare", "bundled", "--out", "{tmp}/o", "--per-label", "1"],
        "--out {tmp}/o: a folder; a file is written here",
    ),
    (
        "quality eval into a study",
        STUDY_FOLDER,
        ["quality", "eval", "--out", "{tmp}/study/scores/q.json"],
        "inside the study folder",
    ),
    (
        "classifier eval onto a folder",
        {"o/keep": "x"},
        ["classifier", "eval", "--out", "{tmp}/o"],
        "--out {tmp}/o: a folder; a file is written here",
    ),
    (
        "classifier check into a study",
        STUDY_FOLDER,
        ["classifier", "check", "--out", "{tmp}/study/articles/c.md"],
        "inside the study folder",
    ),
    (
        "import-paper onto a file",
        {"p": "x", "paper/x": ""},
        ["import-paper", "{tmp}/paper", "--out", "{tmp}/p"],
        "--out {tmp}/p: a file; a folder is written here",
    ),
    # tables, manifests and folders of another tool, or of another shape than the study on disk
    (
        "analyze: scores of another tool",
        {"out/scores/a__seed0__gen0.parquet": FOREIGN_TABLE},
        ["analyze", "{tmp}/out"],
        "{tmp}/out/scores/a__seed0__gen0.parquet: not a biasamp scores table (no column study, arm, seed",
    ),
    (
        "report: summary of another tool",
        {"out/summary_arms.parquet": FOREIGN_TABLE},
        ["report", "{tmp}/out", "--out", "{tmp}/rep"],
        "{tmp}/out/summary_arms.parquet: not a biasamp summary_arms table (no column study, arm, generation)",
    ),
    (
        "analyze: manifest without a study",
        {"out/manifest.json": json.dumps({"config": {}, "science_hash": "0" * 16}), "out/scores/a.parquet": "x"},
        ["analyze", "{tmp}/out"],
        "{tmp}/out/manifest.json: no 'study' key: not a biasamp manifest",
    ),
    (
        "score: --set of the study's shape",
        SMOKE_ON_DISK,
        ["score", "{tmp}/out", "--set", "generations=7"],
        "--set generations: `score` changes scoring.* keys only; the rest is what {tmp}/out holds",
    ),
    (
        "run: fewer generations than written",
        SMOKE_ON_DISK,
        _run("generations=2"),
        "{tmp}/out holds G0..G2; generations=2, seeds=[0, 1] would record less than is there",
    ),
    (
        "run: a written seed left out",
        SMOKE_ON_DISK,
        _run("seeds=[1]"),
        "{tmp}/out holds G0..G2 of seeds [0]; generations=3, seeds=[1] would record less than is there",
    ),
    (
        "real_fraction of no article",
        {},
        _run("arms.preservation.mix.real_fraction=0.01"),
        "arms.preservation.mix.real_fraction: 0.01 of corpus 'main' (12 articles) is 0 real articles a generation",
    ),
    # text that is not text
    (
        "corpus text a number",
        {"c.jsonl": '{"text": "a b", "label": "left"}\n{"text": 5, "label": "left"}\n'},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "c.jsonl: row 2: text is a number ('5'), not text",
    ),
    (
        "corpus text an object",
        {"c.json": '[{"text": {"a": 1}, "label": "left"}]'},
        _run("corpora.main.source={tmp}/c.json"),
        "c.json: row 1: text is an object",
    ),
    (
        "corpus title a list",
        {"c.parquet": _parquet(text=["a b"], title=[["a", "b"]], label=["left"])},
        _run("corpora.main.source={tmp}/c.parquet"),
        "c.parquet: row 1: title is an array",
    ),
    (
        "classify: text a list",
        {"a.jsonl": '{"text": ["a", "b"]}\n'},
        ["classify", "{tmp}/a.jsonl", "--out", "{tmp}/o.parquet"],
        "a.jsonl: row 1: text is an array",
    ),
    (
        "corpus of zero-width text",
        {"c.jsonl": "".join(json.dumps({"text": "\u200b \u200b", "label": lab}) + "\n" for lab in ("left",) * 9)},
        _run("corpora.main.source={tmp}/c.jsonl"),
        "corpora.main.per_label.left: asks 4 articles, only 0 remain after filters",
    ),
    # paths
    ("--out a symlink loop", {"a": Link("b"), "b": Link("a")}, ["run", SMOKE, "--out", "{tmp}/a"], "a: a symlink loop"),
    # the world a run needs, checked before it writes
    (
        "Ray address with nothing there",
        {},
        _run("resources.ray_address=127.0.0.1:1"),
        "resources.ray_address: nothing answers at 127.0.0.1:1 (Connection refused)",
    ),
    (
        "Ray address not an address",
        {},
        _run("resources.ray_address=not a url"),
        "resources.ray_address: 'not a url' is not auto, HOST:PORT or ray://HOST:PORT",
    ),
    # flags
    ("--out empty", {}, ["validate", SMOKE, "--out", ""], "biasamp: --out is empty; give a path or value"),
    ("--out= empty", {}, ["run", SMOKE, "--out="], "biasamp: --out is empty"),
    ("analyze: path only spaces", {}, ["analyze", "  "], "biasamp: argument 2 is empty"),
    ("unknown flag", {}, ["run", SMOKE, "--bogus"], "No such option: --bogus"),
    ("bad flag value", {}, ["analyze", "{tmp}", "--mode", "sideways"], "Invalid value for --mode"),
    ("missing argument", {}, ["run"], "Missing argument 'config'"),
]


def _write(tmp: Path, files: dict) -> None:
    for name, content in files.items():
        f = tmp / name
        f.parent.mkdir(parents=True, exist_ok=True)
        if content is FIFO:
            os.mkfifo(f)
        elif isinstance(content, Link):
            os.symlink(content, f)
        else:
            f.write_bytes(content if isinstance(content, bytes) else content.encode())


# Cases also run from a fresh interpreter: a config, a study run, a corpus and a usage error.
SUBPROCESS = {"config not YAML", "infinite lr", "corpus bad label", "unknown flag"}


def _case(tmp: Path, files: dict, args: list[str], fresh: bool = False):
    """One case as a user meets it (forked, or `fresh` from a new interpreter): its files written, the
    command run in the case's folder with a temp dir of its own; what came back, and the folder
    before and after."""
    _write(tmp, files)
    (tmp / "systmp").mkdir()
    env = {"HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp / "systmp"), "RAY_TMPDIR": "/tmp", "COLUMNS": "200"}
    env["WANDB_SILENT"] = None  # the suite's: with a WANDB_* variable set, `run` imports W&B to check it (0.9 s)
    before = folder_tree(tmp)
    res = cli(*(a.replace("{tmp}", str(tmp)) for a in args), env=env, cwd=tmp, fresh=fresh)
    return res, before, folder_tree(tmp)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    """The selected cases, run 2 at a time, once per test run (the first worker to ask runs them):
    case id -> (its folder, the result, whether its folder was unchanged, and for SUBPROCESS cases
    the result from a fresh interpreter)."""
    selected = sorted({i.callspec.params["name"] for i in request.session.items if i.originalname == TEST})
    return built_once(
        tmp_path_factory,
        "bad-input-" + hashlib.sha256("\n".join(selected).encode()).hexdigest()[:12],
        lambda root: _run_cases(root, set(selected)),
    )


def _run_cases(root: Path, selected: set[str]) -> dict:
    folders = {c[0]: root / f"case{i}" for i, c in enumerate(CASES) if c[0] in selected}
    for folder in folders.values():
        folder.mkdir()
    with ThreadPoolExecutor(2) as pool:
        futures = {
            name: pool.submit(_case, folders[name], files, args) for name, files, args, _ in CASES if name in folders
        }
        done = {name: f.result() for name, f in futures.items()}
    out = {}
    for name, files, args, _ in CASES:
        if name not in folders:
            continue
        res, before, after = done[name]
        fresh = None
        if name in SUBPROCESS:  # in a copy of the case's folder as it was before its forked run
            again = root / f"{folders[name].name}-subprocess"
            again.mkdir()
            f_res, f_before, f_after = _case(again, files, args, fresh=True)
            same = [t.replace(str(again), str(folders[name])) for t in (f_res.stdout, f_res.stderr)]
            fresh = [f_res.returncode, *same, f_after == f_before]
        out[name] = [str(folders[name]), res.returncode, res.stdout, res.stderr, after == before, fresh]
    return out


TEST = "test_bad_input_is_one_line_and_exit_2"


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(results, name):
    says = next(c[3] for c in CASES if c[0] == name)
    tmp, returncode, stdout, stderr, unchanged, fresh = results[name]
    if fresh is not None:  # the same command from a fresh interpreter: the same exit, words and folder
        assert fresh == [returncode, stdout, stderr, True]
    lines = stderr.strip().splitlines()
    assert returncode == 2, stdout + stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert says.replace("{tmp}", tmp) in lines[0], lines[0]
    assert "Ray at" not in stdout  # stopped before Ray started
    assert unchanged  # nothing written or changed: in --out, beside it, in the temp dir (folders too)


@pytest.mark.parametrize(
    "env, says",
    [
        ({"TMPDIR": "{tmp}/" + "t" * 60}, "TMPDIR: {tmp}/ttt"),
        ({"WANDB_MODE": "bogus"}, "WANDB_MODE=bogus: Input should be 'online', 'offline'"),
    ],
    ids=["TMPDIR too long for Ray's sockets", "WANDB_MODE unknown"],
)
def test_the_environment_a_run_needs_is_checked_before_it_writes(tmp_path, env, says):
    """Variables the command line does not name, read by Ray or W&B only once the run has started:
    `validate` and `run` name the variable, and write nothing."""
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    Path(env.get("TMPDIR", tmp_path)).mkdir(exist_ok=True)
    for command in ("validate", "run"):
        res = cli(command, SMOKE, "--out", str(tmp_path / "out"), "--set", "wandb.mode=offline", env=env)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
        assert says.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
        assert not (tmp_path / "out").exists()
