"""Typed configs from YAML: pydantic v2 models with unknown keys rejected, plus ``--set a.b=value`` overrides.

Every default lives in a YAML file under ``configs/``; the pydantic model says what each key may hold.
Errors name the file, the dotted key and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

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
    """Load ``model_cls`` from ``path`` (or ``default_path``, or the model's defaults), then apply overrides.

    Raises ConfigError naming the file and the dotted key, e.g.
    ``configs/medical3d/default.yaml: key 'train.epochs': Input should be a valid integer (got 'ten')``.
    """
    chosen = path if path is not None else default_path
    data = read_yaml(Path(chosen)) if chosen is not None else {}
    source = str(chosen) if chosen is not None else "<defaults>"
    overrides = list(overrides)
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} with --set {' '.join(overrides)}"
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def config_snapshot(cfg: BaseModel) -> dict[str, Any]:
    """Plain JSON-able dict of a config, for run.json, checkpoints and ONNX metadata."""
    return cfg.model_dump(mode="json")
