from pathlib import Path

import pytest
import yaml

from biasamp.config import ConfigError, from_dict, load_config

CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate_and_say_how_to_run_them(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.arms and cfg.generations >= 1
    assert (CONFIGS / name).read_text().startswith("# Run: "), name


def test_the_sweep_config_sweeps_the_real_fraction_beside_the_synthetic_baseline():
    cfg = load_config(CONFIGS / "sweep.yaml")
    assert cfg.analysis.baseline_arm == "synthetic" and cfg.sweep.key == "mix.real_fraction"
    assert [cfg.arms[cfg.sweep.arm_name(v)].mix.real_fraction for v in cfg.sweep.values] == list(cfg.sweep.values)


def test_paper_config_is_the_papers_design():
    cfg = load_config(CONFIGS / "paper.yaml")
    assert cfg.model.name == "gpt2" and cfg.generations == 11
    assert cfg.corpora["main"].per_label == {"left": 506, "center": 506, "right": 506}
    assert cfg.corpora["main"].years == (2012, 2018)
    syn, over = cfg.arms["synthetic"].train, cfg.arms["overfitting"].train
    assert (syn.epochs, syn.batch_size, syn.lr, syn.weight_decay, syn.max_length) == (5, 8, 5e-5, 0.01, 512)
    assert (over.epochs, over.weight_decay, over.batch_size) == (25, 0.0, 8)  # inherits the rest
    assert cfg.arms["preservation"].mix.kind == "preserve" and cfg.arms["preservation"].mix.real_fraction == 0.1
    assert cfg.arms["accumulation"].mix.kind == "accumulate"
    assert cfg.corpora[cfg.arms["center_only"].corpus].per_label == {"center": 1518}
    assert cfg.generation.block_tokens == 64 and cfg.generation.new_tokens == 64
    assert cfg.generation.prompt_source == "real"


def _write(tmp_path, d) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["arms"]["synthetic"].update(epochz=3), "arms.synthetic.epochz: unknown key"),
        (lambda d: d["train"].update(epochs="many"), "train.epochs: Input should be a valid number"),
        (lambda d: d.update(generations=0), "generations: Input should be greater than or equal to 1"),
        (lambda d: d["arms"]["synthetic"].update(mix="shuffle"), "arms.synthetic.mix: Input tag 'shuffle'"),
        (
            lambda d: d["arms"]["synthetic"].update(real_fraction=0.3),
            "arms.synthetic.mix.real_fraction: not a setting of this mix kind",
        ),
        (lambda d: d["arms"]["synthetic"].update(corpus="nope"), "arms.synthetic.corpus: 'nope' is not in corpora"),
        (lambda d: d["corpora"]["main"].update(per_label={"left": 0}), "per_label needs at least one label"),
        (lambda d: d["corpora"]["main"].update(per_label={"far_left": 3}), "corpora.main.per_label.far_left"),
        (lambda d: d.update(seeds=[1, 1]), "seeds: need at least one seed, no repeats"),
    ],
)
def test_errors_name_file_and_key_path(tmp_path, study_dict, mutate, expected):
    d = study_dict()
    mutate(d)
    path = _write(tmp_path, d)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and expected in msg and "\n" not in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nothere.yaml: no such file"):
        load_config(tmp_path / "nothere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_overrides_and_arm_inheritance(tmp_path, study_dict):
    d = study_dict()
    d["arms"]["overfit"] = {"train": {"epochs": 7}}
    path = _write(tmp_path, d)
    cfg = load_config(path, ["train.lr=0.5", "arms.overfit.train.weight_decay=0", "generations=4"])
    assert cfg.generations == 4
    assert cfg.arms["synthetic"].train.lr == 0.5 and cfg.arms["overfit"].train.lr == 0.5
    assert cfg.arms["overfit"].train.epochs == 7 and cfg.arms["overfit"].train.weight_decay == 0
    assert cfg.neurons.max_length == d["train"]["max_length"]  # the probe is truncated like training data
    assert load_config(path, ["neurons.max_length=64"]).neurons.max_length == 64
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match=r"--set seeds=\[0,: the value is not valid YAML"):
        load_config(path, ["seeds=[0,"])
    with pytest.raises(ConfigError, match="'lr' is not a mapping"):
        load_config(path, ["train.lr.x=1"])


def test_config_is_immutable_and_hash_ignores_scale(study_dict):
    cfg = from_dict(study_dict())
    with pytest.raises(Exception):
        cfg.generations = 5
    more = from_dict(study_dict(seeds=[0, 1, 2], generations=9, resources={"cpus_per_trajectory": 2}))
    assert more.science_hash() == cfg.science_hash()
    other = from_dict(study_dict(train={"epochs": 2}))
    assert other.science_hash() != cfg.science_hash()


def test_a_study_hashed_before_model_overrides_existed_keeps_its_hash():
    """`model.overrides` came after studies were hashed; left empty it must leave the hash as it was, or
    no study written before it would resume. 47ef763b3dc57fbf is configs/smoke.yaml's hash (with one
    epoch) as commit 51fce71's config.py computes it (a deliberate change of smoke.yaml changes it too)."""
    assert load_config(CONFIGS / "smoke.yaml").science_hash() == "47ef763b3dc57fbf"


def test_baseline_arm_defaults_to_the_first_arm_and_is_checked(study_dict):
    d = study_dict()
    d["arms"] = {"zeta": {"mix": "replace"}, "alpha": {"mix": "accumulate"}}
    cfg = from_dict(d)
    assert cfg.analysis.baseline_arm == "zeta"  # the config's order, kept in the manifest (sorted keys)
    assert from_dict(cfg.model_dump(mode="json")).analysis.baseline_arm == "zeta"
    assert from_dict({**d, "analysis": {"baseline_arm": "alpha"}}).science_hash() == cfg.science_hash()
    with pytest.raises(ConfigError, match="analysis.baseline_arm: 'beta' is not an arm"):
        from_dict({**d, "analysis": {"baseline_arm": "beta"}})


def test_arms_inherit_train_deeply_through_every_entry_point(tmp_path, study_dict):
    """An arm that sets only train.deepspeed.zero_stage keeps the study's workers, and a study-level
    lr reaches every arm, however the config arrives."""
    import json

    from typer.testing import CliRunner

    from biasamp.cli import app
    from biasamp.config import StudyConfig

    d = study_dict()
    d["train"].update(lr=0.1, deepspeed={"workers": 4, "micro_batch": 1})
    d["train"]["batch_size"] = 4
    d["arms"]["zero3"] = {"train": {"deepspeed": {"zero_stage": 3}}}
    path = _write(tmp_path, d)
    entry_points = {
        "load_config": load_config(path),
        "from_dict": from_dict(d),
        "model_validate": StudyConfig.model_validate(d),
        "--set": load_config(path, ["arms.zero3.train.deepspeed.zero_stage=3"]),
    }
    entry_points["manifest"] = from_dict(
        json.loads(json.dumps(entry_points["load_config"].model_dump(mode="json"), sort_keys=True))
    )
    for name, cfg in entry_points.items():
        ds = cfg.arms["zero3"].train.deepspeed
        assert (ds.workers, ds.zero_stage) == (4, 3), name
        assert cfg.arms["synthetic"].train.lr == 0.1 and cfg.arms["zero3"].train.lr == 0.1, name
        assert cfg.science_hash() == entry_points["load_config"].science_hash(), name
    shown = CliRunner().invoke(app, ["validate", str(path), "--show"])
    assert shown.exit_code == 0, shown.output
    resolved = yaml.safe_load(shown.output.split("\n" + str(path))[0])
    assert resolved["arms"]["zero3"]["train"]["deepspeed"] == {
        "workers": 4,
        "zero_stage": 3,
        "precision": "fp32",
        "micro_batch": 1,
        "cpus_per_worker": 1.0,
    }


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epoch=3", "train.epoch: unknown key (did you mean 'epochs'?)"),
        ("trian={}", "trian: unknown key (did you mean 'train'?)"),
        ("scoring.classifer.kind=hf", "scoring.classifer: unknown key (did you mean 'classifier'?)"),
        (
            "arms.synthetic.train.deepspeed.worker=3",
            "arms.synthetic.train.deepspeed.worker: unknown key (did you mean 'workers'?)",
        ),
    ],
)
def test_a_typo_is_reported_once_with_a_suggestion(tmp_path, study_dict, override, expected):
    d = study_dict()
    d["arms"]["other"] = {}
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, d), [override])
    assert str(err.value).endswith(expected), str(err.value)  # one error, not one per arm


def test_docs_list_the_declared_tables():
    import biasamp.instruments  # noqa: F401  (registers the built-in measure, tqi, whose columns the listing has)
    from biasamp.tables import listing

    assert listing() in (CONFIGS.parent / "docs" / "loop.md").read_text()


def test_backend_settings_live_under_the_backend_that_uses_them(study_dict):
    d = study_dict(generation={"backend": "vllm", "engines": 2}, resources={"cpus_per_trajectory": 2})
    cfg = from_dict(d)
    assert (cfg.generation.backend.kind, cfg.generation.backend.engines) == ("vllm", 2)
    assert from_dict(cfg.model_dump(mode="json")).generation.backend == cfg.generation.backend
    hf = from_dict(study_dict())
    assert "engines" not in hf.model_dump()["generation"]["backend"]  # the hash means what it says
    with pytest.raises(ConfigError, match="generation.backend.engines: not a setting of this backend kind"):
        from_dict(study_dict(generation={"engines": 2}))


def test_vllm_engines_are_cpu_engines_in_a_study_without_gpus(study_dict):
    """`backend: vllm` on a CPU study runs CPU engines inside each trajectory's own bundle (its cores
    wait for them); with GPUs per trajectory, each engine takes a GPU in a bundle of its own."""
    from biasamp.preflight import trajectory_bundles

    cpu = from_dict(study_dict(generation={"backend": "vllm"}, resources={"cpus_per_trajectory": 2}))
    assert cpu.generation.backend.gpus_per_engine == 0 and trajectory_bundles(cpu) == [{"CPU": 2}]
    gpu = from_dict(
        study_dict(generation={"backend": {"kind": "vllm", "engines": 2}}, resources={"gpus_per_trajectory": 1})
    )
    assert gpu.generation.backend.gpus_per_engine == 1
    assert trajectory_bundles(gpu) == [{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}]
    for resolved in (cpu, gpu):  # a manifest: the resolved value is kept
        assert from_dict(resolved.model_dump(mode="json")).generation == resolved.generation
    explicit = from_dict(study_dict(generation={"backend": {"kind": "vllm", "gpus_per_engine": 0.5}}))
    assert trajectory_bundles(explicit)[1:] == [{"CPU": 1, "GPU": 0.5}]


def test_a_manifest_written_before_settings_moved_under_their_kind_still_loads(study_dict):
    """Old manifests are flat and carry every default: mix: replace + real_fraction: 0.1, backend: hf +
    engines: 1. Defaults for another kind are dropped; a deliberate value still fails, in one line."""
    d = study_dict(generation={"backend": "hf", "engines": 1, "gpus_per_engine": 1.0})
    d["arms"] = {
        "synthetic": {"mix": "replace", "real_fraction": 0.1},
        "pres": {"mix": "preserve", "real_fraction": 0.3},
    }
    cfg = from_dict(d)
    assert cfg.arms["synthetic"].mix.kind == "replace" and cfg.arms["pres"].mix.real_fraction == 0.3
    assert cfg.generation.backend.kind == "hf"
    d["arms"]["synthetic"]["real_fraction"] = 0.5
    with pytest.raises(ConfigError, match="arms.synthetic.mix.real_fraction: not a setting of this mix kind"):
        from_dict(d)
    with pytest.raises(ConfigError, match="generation.backend.engines: not a setting of this backend kind"):
        from_dict(study_dict(generation={"backend": {"engines": 2}}))


def test_the_readme_config_validates():
    readme = (CONFIGS.parent / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = from_dict(yaml.safe_load(block), "README.md")
    assert cfg.study == "quickstart" and cfg.arms["preservation"].mix.real_fraction == 0.1
