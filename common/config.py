"""Typed configs from YAML: pydantic v2 models with unknown keys rejected, plus ``--set a.b=value`` overrides.

Every default lives in a vertical's ``configs/<vertical>/default.yaml``; the pydantic models say what each key may
hold (types, bounds, ``Literal`` sets) and carry no defaults. Any other config file is deep-merged over
``default.yaml``, so it may be partial. Errors name the file, the dotted key and what was expected.

The training-loop models shared by both verticals (``TrainConfig``, ``StageConfig``) live here, not in the torch
side (``common.engine``), so loading a config never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(InputError):
    """A config file or override that does not fit its model."""


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"classifier.epochs=5"`` -> (["classifier", "epochs"], 5). The value is read as a YAML scalar or flow list."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. classifier.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from exc
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=value`` override applied (nested dicts created as needed)."""
    out = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                dotted = ".".join(path[: i + 1])
                raise ConfigError(f"{source} {text!r}: {dotted} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: nested mappings merge key by key, any other value replaces."""
    out = _deep_copy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = _deep_copy(value) if isinstance(value, dict) else value
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key!r}")
            continue
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source}: key {key!r}: {err['msg']}{got_text}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; an InputError names the file when it is missing, unreadable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def load_config(
    model_cls: type[M],
    path: Path | str | None = None,
    overrides: Iterable[str] = (),
    default_path: Path | str | None = None,
) -> M:
    """``model_cls`` from ``default_path`` with ``path`` deep-merged over it, then ``--set`` overrides applied.

    Raises ConfigError naming the file and the dotted key, e.g.
    ``configs/medical3d/tiny.yaml: key 'train.epochs': Input should be a valid integer (got 'ten')``.
    """
    data: dict[str, Any] = read_yaml(Path(default_path)) if default_path is not None else {}
    sources = [str(default_path)] if default_path is not None else []
    if path is not None and (default_path is None or Path(path).resolve() != Path(default_path).resolve()):
        data = deep_merge(data, read_yaml(Path(path)))
        sources = [str(path)] if default_path is None else [f"{path} (over {Path(default_path).name})"]
    source = sources[0] if sources else "<no config file>"
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} with --set {' '.join(overrides)}"
    return validate_config(model_cls, data, source)


def validate_config(model_cls: type[M], data: dict[str, Any], source: str) -> M:
    """``model_cls.model_validate(data)``; a ConfigError names ``source`` and every bad key."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def yaml_section(path: Path | str, dotted: str = "") -> dict[str, Any]:
    """The mapping at ``dotted`` (e.g. ``"classifier.train"``) in the YAML file ``path``; "" is the whole file."""
    node: Any = read_yaml(Path(path))
    for part in filter(None, dotted.split(".")):
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            raise ConfigError(f"{path}: no section {dotted!r}")
        node = node[part]
    return node


def config_section(model_cls: type[M], default_path: Path | str, dotted: str = "", /, **changes: Any) -> M:
    """A sub-config with its defaults from ``default_path`` at ``dotted``, ``changes`` deep-merged over them.

    ``config_section(TrainConfig, QC_DEFAULTS, "classifier.train", epochs=2)``; also re-validates a section read
    back from an older run (a key added since takes its default from the YAML).
    """
    data = deep_merge(yaml_section(default_path, dotted), changes)
    return validate_config(model_cls, data, f"{default_path}:{dotted or '<root>'}")


def config_snapshot(cfg: BaseModel) -> dict[str, Any]:
    """Plain JSON-able dict of a config, for run.json, checkpoints and ONNX metadata."""
    return cfg.model_dump(mode="json")


Monitor = Literal["balanced_accuracy", "accuracy", "auroc", "loss"]


class StageConfig(StrictModel):
    """One stage of staged unfreezing: train only the parameters whose names start with ``trainable``."""

    epochs: int = Field(ge=1)
    lr: float = Field(gt=0)
    trainable: list[str] = Field(min_length=1)  # name prefixes; "*" = every parameter


class TrainConfig(StrictModel):
    """The shared training loop (``common.engine.fit``): optimizer, schedule, loss, early stopping."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["adamw", "sgd"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    momentum: float = Field(ge=0, lt=1)
    scheduler: Literal["cosine_warm_restarts", "none"]
    t0: int = Field(ge=1)  # epochs in the first cosine cycle
    t_mult: int = Field(ge=1)
    min_lr: float = Field(ge=0)
    # with a deadline the first cosine cycle is fitted to the time left: the rate has annealed when time runs out
    fit_cycle_to_deadline: bool
    loss: Literal["ce", "focal"]
    class_weighting: Literal["none", "balanced"]
    focal_gamma: float = Field(ge=0)
    focal_alpha: float | None = Field(gt=0, lt=1)
    label_smoothing: float = Field(ge=0, lt=1)
    grad_clip: float | None = Field(gt=0)
    amp: bool  # used only where the device supports it (CUDA)
    # bf16 autocast on a CPU that computes bf16 natively (AMX / AVX512-BF16); fp32 elsewhere, where it is emulated
    cpu_bf16: bool
    monitor: Monitor
    patience: int = Field(ge=1)
    stages: list[StageConfig] | None  # staged unfreezing; when set, it replaces epochs/lr

    @model_validator(mode="after")
    def _stages_nonempty(self) -> TrainConfig:
        if self.stages is not None and not self.stages:
            raise ValueError("stages: give at least one stage or leave it out")
        return self

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages) if self.stages else self.epochs
