"""Training checkpoints: written atomically, read back with ``weights_only`` (no file can run code on load).

A checkpoint written by ``common.engine.fit`` holds weights, optimizer, scheduler, epoch, stage, labels, config,
history and early-stopping state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import InputError


def _plain(value: Any) -> Any:
    """Tensors stay; numpy scalars and arrays become Python numbers and lists, so ``weights_only`` loading (which
    unpickles nothing but tensors and plain containers) can read the checkpoint back. numpy scalars first:
    ``np.float64`` is a ``float`` subclass and would otherwise be pickled as a numpy object."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (tmp + rename) so a crash mid-save never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(_plain(payload), tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by ``fit`` (weights, optimizer, scheduler, epoch, labels, config, history).

    ``weights_only``: tensors and plain containers only; a file that would construct any other object (and so
    could run code while being unpickled) is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or unsafe file
        raise InputError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
