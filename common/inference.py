"""ONNX inference with onnxruntime: ``OnnxModel`` loads a self-describing ONNX file and runs batches.

Importing this module must import neither torch nor scikit-learn: the line script, batch scoring and the apps run
on onnxruntime and numpy alone (``softmax`` lives here for them).
"""

from __future__ import annotations

import json
import math
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


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``; (N, C) -> (N, C) float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


_shared_pool: bool | None = None  # None: not requested; then whether this process's sessions share one pool


def share_thread_pool(threads: int | None = None) -> bool:
    """Make every later ``OnnxModel`` of this process run on one process-wide intra-op thread pool.

    For the line and batch scoring, where each part goes through two sessions back to back (detector, then
    classifier): with a pool per session every switch wakes the other pool's threads and they compete for the
    cores; one shared pool measured 10-13% less latency per part on 2 cores (detector + 6 crops: 23-24 ms
    against 26 ms). Call it only in a process where every onnxruntime session is an ``OnnxModel``: once the
    global pool exists, onnxruntime refuses sessions with pools of their own (Ultralytics' ONNX backend makes
    such sessions, so ``qc eval`` must not call this). ``VSUITE_ORT_SHARED_POOL=0`` turns it off. Returns
    whether the shared pool is in use.
    """
    global _shared_pool
    if _shared_pool is None:
        _shared_pool = False
        if os.environ.get("VSUITE_ORT_SHARED_POOL", "1") != "0":
            if threads is None:
                threads = int(os.environ.get("VSUITE_ORT_THREADS", "0"))
            try:
                from onnxruntime.capi import _pybind_state

                _pybind_state.set_global_thread_pool_sizes(max(threads, 0), 1)
                _shared_pool = True
            except Exception:  # an older onnxruntime, or pools made elsewhere: per-session pools
                _shared_pool = False
    return _shared_pool


def shared_pool_active() -> bool:
    """Whether ``share_thread_pool`` put this process on one global onnxruntime pool."""
    return bool(_shared_pool)


def available_providers() -> list[str]:
    """The default providers: CUDA first when onnxruntime-gpu has it, then the CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


PROVIDERS_ENV = "VSUITE_ORT_PROVIDERS"


def session_providers() -> list[str]:
    """The providers sessions use: ``VSUITE_ORT_PROVIDERS`` (a comma list in priority order, e.g.
    ``TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider``) when set, else
    ``available_providers()``. A provider this onnxruntime lacks is an InputError naming those it has: asking
    for a GPU and silently getting the CPU would hide a wrong install."""
    text = os.environ.get(PROVIDERS_ENV, "").strip()
    if not text:
        return available_providers()
    import onnxruntime as ort

    have = ort.get_available_providers()
    asked = [p.strip() for p in text.split(",") if p.strip()]
    missing = [p for p in asked if p not in have]
    if missing or not asked:
        problem = f"{', '.join(missing)} not available in this onnxruntime" if missing else "names no provider"
        raise InputError(f"{PROVIDERS_ENV}={text!r}: {problem}; available: {', '.join(have)}")
    return list(dict.fromkeys(asked))


class OnnxModel:
    """An ONNX model on onnxruntime (``providers``, else ``session_providers()``: VSUITE_ORT_PROVIDERS, or CUDA when
    available, else CPU) with its metadata decoded.

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
        if _shared_pool:
            opts.use_per_session_threads = False
        else:
            if threads > 0:
                opts.intra_op_num_threads = threads
            # No busy-waiting between runs: two sessions alternate on the line (detector, then classifier), and
            # on a small CPU the idle session's spinning threads steal the cores the other one needs.
            opts.add_session_config_entry("session.intra_op.allow_spinning",
                                          os.environ.get("VSUITE_ORT_SPIN", "0"))
        opts.log_severity_level = 3
        providers = providers or session_providers()
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
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

    @property
    def output_shape(self) -> list:
        """Shape of the first output (ints, or strings for symbolic dimensions)."""
        return list(self.session.get_outputs()[0].shape)

    def number(self, key: str, default: float | None = None, *, low: float | None = None,
               high: float | None = None, low_open: bool = False, integer: bool = False) -> float:
        """Metadata ``key`` as a finite number in [low, high] (``low_open``: (low, high]); ``default`` when absent
        (None: required). Anything else refuses the model: a NaN threshold would pass every part."""
        value = self.metadata.get(key, default)
        where = f"{self.path}: metadata {key}={value!r}"
        if value is None:
            raise InputError(f"{self.path}: metadata lacks {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where}: expected a number")
        if not math.isfinite(value):
            raise InputError(f"{where}: not a finite number")
        if integer and value != int(value):
            raise InputError(f"{where}: expected a whole number")
        if low is not None and (value <= low if low_open else value < low):
            raise InputError(f"{where}: must be {'>' if low_open else '>='} {low}")
        if high is not None and value > high:
            raise InputError(f"{where}: must be <= {high}")
        return int(value) if integer else float(value)

    def checked_labels(self, n_outputs: int | str | None) -> list[str]:
        """Metadata ``labels``: unique non-empty strings, one per output (when the output size is fixed)."""
        labels = self.metadata.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise InputError(f"{self.path}: metadata labels={labels!r}: expected a list of class names")
        if len(set(labels)) != len(labels):
            raise InputError(f"{self.path}: metadata labels {labels} name a class twice")
        if isinstance(n_outputs, int) and n_outputs != len(labels):
            raise InputError(f"{self.path}: metadata names {len(labels)} classes but the model outputs {n_outputs}")
        return list(labels)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path.name}, input={self.input_name}{self.input_shape})"
