"""ONNX inference with onnxruntime: ``OnnxModel`` loads a self-describing ONNX file and runs batches.

Importing this module must not import torch: the line script, batch scoring and the apps run on
onnxruntime alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InputError


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def available_providers() -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class OnnxModel:
    """An ONNX model on onnxruntime (CUDA when available, else CPU) with its metadata decoded.

    ``metadata``: dict from the file's metadata_props, JSON values decoded (labels, thresholds, ...).
    ``run(x)``: x (B, ...) float32 -> first output as a numpy array.
    """

    def __init__(self, path: Path | str, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: ONNX model not found")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is None:
            threads = int(os.environ.get("VSUITE_ORT_THREADS", "0"))
        if threads > 0:
            opts.intra_op_num_threads = threads
        # No busy-waiting between runs: two sessions alternate on the line (detector, then classifier), and on a
        # small CPU the idle session's spinning threads steal the cores the other one needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning",
                                      os.environ.get("VSUITE_ORT_SPIN", "0"))
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                providers=providers or available_providers())
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise InputError(f"{self.path}: not a loadable ONNX model ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {k: _decode(v) for k, v in meta.items()}
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_shape: list = list(inp.shape)
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns the first output."""
        return self.run_all(x)[0]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self.input_name: x})

    @property
    def labels(self) -> list[str]:
        return list(self.metadata.get("labels", []))

    def __repr__(self) -> str:
        return f"OnnxModel({self.path.name}, input={self.input_name}{self.input_shape})"
