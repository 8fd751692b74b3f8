from pathlib import Path
from typing import Literal

import pytest

from common.config import ConfigError, StrictModel, apply_overrides, load_config, parse_override


class Inner(StrictModel):
    arch: Literal["resnet18", "resnet50"] = "resnet18"
    epochs: int = 30


class Outer(StrictModel):
    classifier: Inner = Inner()
    seed: int = 0


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_loads_values_and_defaults(tmp_path):
    cfg = load_config(Outer, write(tmp_path, "classifier:\n  epochs: 5\n"))
    assert cfg.classifier.epochs == 5
    assert cfg.classifier.arch == "resnet18"
    assert cfg.seed == 0


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "classifier:\n  epochs: 5\n  epoch: 7\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "classifier.epoch" in msg
    assert "unknown key" in msg


def test_wrong_type_names_key_and_expectation(tmp_path):
    path = write(tmp_path, "classifier:\n  epochs: ten\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path)
    msg = str(exc.value)
    assert str(path) in msg and "classifier.epochs" in msg and "integer" in msg and "'ten'" in msg


def test_literal_choice_error_lists_allowed(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, write(tmp_path, "classifier:\n  arch: vgg16\n"))
    assert "classifier.arch" in str(exc.value) and "resnet50" in str(exc.value)


def test_overrides_are_type_checked(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    cfg = load_config(Outer, path, ["classifier.epochs=5", "classifier.arch=resnet50"])
    assert (cfg.classifier.epochs, cfg.classifier.arch, cfg.seed) == (5, "resnet50", 1)
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path, ["classifier.epochs=many"])
    assert "classifier.epochs" in str(exc.value) and "--set" in str(exc.value)
    with pytest.raises(ConfigError, match="unknown key 'classifier.depth'"):
        load_config(Outer, path, ["classifier.depth=3"])


def test_override_parsing():
    assert parse_override("a.b=5") == (["a", "b"], 5)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"cfg.yaml:2: invalid YAML"):
        load_config(Outer, write(tmp_path, "seed: 1\n  bad: [\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n"))
