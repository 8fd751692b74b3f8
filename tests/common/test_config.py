"""common.config: YAML defaults deep-merged with partial files, strict keys, Literal sets, --set overrides; and every
shipped config under configs/ loads as default.yaml deep-merged with it."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel

from common.config import (
    CONFIG_DIR,
    ConfigError,
    StrictModel,
    apply_overrides,
    config_section,
    config_snapshot,
    deep_merge,
    load_config,
    parse_override,
    read_yaml,
)
from industrial_qc.config import QCConfig
from medical3d.config import MedicalConfig

MODELS = {"industrial_qc": QCConfig, "medical3d": MedicalConfig}


class Inner(StrictModel):
    arch: Literal["resnet18", "resnet50"]
    epochs: int


class Outer(StrictModel):
    classifier: Inner
    seed: int


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture
def defaults(tmp_path) -> Path:
    return write(tmp_path, "seed: 0\nclassifier:\n  arch: resnet18\n  epochs: 30\n", "default.yaml")


def test_partial_file_is_merged_over_the_defaults(tmp_path, defaults):
    cfg = load_config(Outer, write(tmp_path, "classifier:\n  epochs: 5\n"), default_path=defaults)
    assert (cfg.classifier.epochs, cfg.classifier.arch, cfg.seed) == (5, "resnet18", 0)
    assert load_config(Outer, None, default_path=defaults).classifier.epochs == 30


def test_a_key_missing_everywhere_is_named(tmp_path):
    path = write(tmp_path, "seed: 1\nclassifier:\n  arch: resnet18\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path)
    assert "classifier.epochs" in str(exc.value) and "Field required" in str(exc.value)


def test_unknown_key_names_file_and_key(tmp_path, defaults):
    path = write(tmp_path, "classifier:\n  epochs: 5\n  epoch: 7\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path, default_path=defaults)
    msg = str(exc.value)
    assert str(path) in msg and "classifier.epoch" in msg and "unknown key" in msg


def test_wrong_type_names_key_and_expectation(tmp_path, defaults):
    path = write(tmp_path, "classifier:\n  epochs: ten\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path, default_path=defaults)
    msg = str(exc.value)
    assert str(path) in msg and "classifier.epochs" in msg and "integer" in msg and "'ten'" in msg


def test_literal_choice_error_lists_allowed(tmp_path, defaults):
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, write(tmp_path, "classifier:\n  arch: vgg16\n"), default_path=defaults)
    assert "classifier.arch" in str(exc.value) and "resnet50" in str(exc.value)


def test_overrides_are_type_checked(tmp_path, defaults):
    path = write(tmp_path, "seed: 1\n")
    cfg = load_config(Outer, path, ["classifier.epochs=5", "classifier.arch=resnet50"], default_path=defaults)
    assert (cfg.classifier.epochs, cfg.classifier.arch, cfg.seed) == (5, "resnet50", 1)
    with pytest.raises(ConfigError) as exc:
        load_config(Outer, path, ["classifier.epochs=many"], default_path=defaults)
    assert "classifier.epochs" in str(exc.value) and "--set" in str(exc.value)
    with pytest.raises(ConfigError, match="unknown key 'classifier.depth'"):
        load_config(Outer, path, ["classifier.depth=3"], default_path=defaults)


def test_override_parsing_and_merging():
    assert parse_override("a.b=5") == (["a", "b"], 5)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"a": 1}, ["a.b=2"])
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    assert deep_merge(base, {"a": {"c": [3]}, "e": 1}) == {"a": {"b": 1, "c": [3]}, "d": 0, "e": 1}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 0}  # not modified


def test_missing_and_malformed_files(tmp_path, defaults):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml", default_path=defaults)
    with pytest.raises(ConfigError, match=r"cfg.yaml:2: invalid YAML"):
        load_config(Outer, write(tmp_path, "seed: 1\n  bad: [\n"), default_path=defaults)
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n"), default_path=defaults)


def test_config_section_reads_defaults_from_yaml(defaults):
    assert config_section(Inner, defaults, "classifier", epochs=2) == Inner(arch="resnet18", epochs=2)
    with pytest.raises(ConfigError, match="no section 'trainer'"):
        config_section(Inner, defaults, "trainer")


# ---------------------------------------------------------------- the shipped configs


def shipped_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*/*.yaml"))


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_is_default_yaml_merged_with_it(path):
    model = MODELS[path.parent.name]
    default = path.parent / "default.yaml"
    loaded = config_snapshot(load_config(model, path, default_path=default))
    expected = config_snapshot(model.model_validate(deep_merge(read_yaml(default), read_yaml(path))))
    assert loaded == expected
    if path.name == "default.yaml":  # complete: every key of the model is given in the file itself
        assert _keys(read_yaml(path)) == _keys(loaded)


def _keys(data: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        out |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


def _literal_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, tuple]]:
    """(dotted key, allowed values) of every Literal-typed field, nested models included."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _literal_fields(ann, f"{prefix}{name}.")
        elif typing.get_origin(ann) is Literal:
            out.append((prefix + name, typing.get_args(ann)))
    return out


@pytest.mark.parametrize("vertical", sorted(MODELS))
def test_unknown_keys_and_values_outside_a_literal_are_refused_with_the_key(vertical, tmp_path):
    model, default = MODELS[vertical], CONFIG_DIR / vertical / "default.yaml"
    for section in ("", *(k for k, v in read_yaml(default).items() if isinstance(v, dict))):
        bogus = {"no_such_key": 1} if not section else {section: {"no_such_key": 1}}
        path = write(tmp_path, yaml.safe_dump(bogus))
        key = f"{section}.no_such_key" if section else "no_such_key"
        with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
            load_config(model, path, default_path=default)
    literals = _literal_fields(model)
    assert len(literals) >= 5
    for key, allowed in literals:
        with pytest.raises(ConfigError) as exc:
            load_config(model, None, [f"{key}=not-a-choice"], default_path=default)
        assert f"'{key}'" in str(exc.value) and repr(allowed[0]).strip("'") in str(exc.value)


def test_config_comments_are_short():
    """A config comment says why in one line (two at most); the evidence lives in benchmarks/RESULTS.md."""
    for path in shipped_configs():
        run = 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            only_comment = line.lstrip().startswith("#")  # continues the comment above, if any
            run = run + 1 if only_comment else int("#" in line)
            assert run <= 2, f"{path}:{n}: a comment over two lines"
