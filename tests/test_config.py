from pathlib import Path

import pytest
import yaml

from synthimg.config import (
    Config,
    CurateConfig,
    config_hash,
    load_config,
    parse_overrides,
    save_resolved,
)
from synthimg.errors import SynthimgError


def test_defaults_are_the_papers_recipe():
    cfg = Config()
    assert cfg.generate.cfg == 2.0 and cfg.generate.steps == 50 and cfg.generate.scheduler == "ddim"
    assert (cfg.train.beta1, cfg.train.beta2, cfg.train.wd, cfg.train.grad_clip) == (0.9, 0.95, 0.1, 1.0)
    assert cfg.train.batch_size == 512 and cfg.train.warmup == 500 and cfg.train.crop_scale == (0.9, 1.0)
    assert cfg.curate.top == 0.3 and cfg.curate.cap == 10000 and cfg.curate.reduce == "max"
    assert cfg.retrieve.aesthetic_weight == 0.0


def test_overrides_nest_and_parse_scalars():
    tree = parse_overrides(["train.lr=1e-6", "train.epochs=10", "task=dtd", "curate.scales=[1000, 2000]"])
    assert tree == {"train": {"lr": "1e-6", "epochs": 10}, "task": "dtd", "curate": {"scales": [1000, 2000]}}
    cfg = load_config(overrides=["train.lr=1e-6", "curate.scales=[1000, 2000]"])
    assert cfg.train.lr == 1e-6 and cfg.curate.scales == [1000, 2000]


def test_precedence_yaml_then_flags_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"task": "dtd", "train": {"lr": 1e-3, "epochs": 3}}))
    cfg = load_config(path, ["train.lr=2e-5"], extra={"train": {"epochs": 7}})
    assert cfg.task == "dtd" and cfg.train.lr == 2e-5 and cfg.train.epochs == 7


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'; valid keys: "),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["train.lr=abc"], "bad value for 'train.lr'"),
        (["curate.reduce=median"], "'max' or 'mean'"),
        (["train.epochs=-1"], "bad value for 'train.epochs'"),
        (["task=nope"], "unknown task 'nope'"),
        (["train.lr"], "not of the form"),
    ],
)
def test_errors_are_one_line_naming_the_key(overrides, fragment):
    with pytest.raises(SynthimgError) as info:
        load_config(overrides=overrides)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_missing_and_broken_files(tmp_path: Path):
    with pytest.raises(SynthimgError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SynthimgError, match="not valid YAML"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path: Path):
    cfg = load_config(overrides=["task=fgvc_aircraft", "train.lr=1e-6"])
    path = save_resolved(cfg, tmp_path)
    again = load_config(path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(cfg) != config_hash(load_config(overrides=["task=fgvc_aircraft"]))


def test_stage_models_stand_alone():
    assert CurateConfig(reduce="mean").reduce == "mean"
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="top"):
        CurateConfig(top=1.5)
