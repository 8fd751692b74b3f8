"""Torch model -> self-describing ONNX file, with a parity check against torch.

The ONNX file carries everything inference needs in ``metadata_props`` (JSON-encoded values): task, labels,
input shape and dtype, preprocessing parameters, thresholds, temperature, package versions and the
training-data fingerprint. Inference reads it back with ``common.inference.OnnxModel.metadata``.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from common.results import now_iso
from common.rundir import package_versions

MIN_OPSET = 17


class ExportError(RuntimeError):
    """Export failed or the ONNX model disagrees with torch beyond tolerance."""


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float
    max_rel_diff: float
    opset: int


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def set_metadata(model_proto: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Replace ``metadata_props`` with ``metadata`` (values JSON-encoded unless already strings)."""
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key = str(key)
        entry.value = _encode(value)


def write_metadata(path: Path | str, metadata: dict[str, Any]) -> None:
    """Merge ``metadata`` into an existing ONNX file's metadata_props (e.g. thresholds chosen after export)."""
    path = Path(path)
    proto = onnx.load(str(path))
    merged = {p.key: p.value for p in proto.metadata_props}
    merged.update({k: _encode(v) for k, v in metadata.items()})
    set_metadata(proto, merged)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def _to_onnx_bytes(model: nn.Module, example: torch.Tensor, input_name: str, output_name: str, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter handles every network we ship (ResNets, MONAI 3D nets) with a dynamic batch
        # axis in one self-contained file; the dynamo exporter would split weights into a side file.
        torch.onnx.export(model, (example,), buf, input_names=[input_name], output_names=[output_name],
                          opset_version=opset, dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path | str,
    metadata: dict[str, Any],
    *,
    input_name: str = "input",
    output_name: str = "logits",
    opset: int = MIN_OPSET,
    check_parity: bool = True,
    rtol: float = 1e-4,
    parity_batches: int = 2,
) -> ExportReport:
    """Export ``model`` (eval mode, CPU) to ``path`` with a dynamic batch axis and ``metadata`` attached.

    ``example``: one input batch, e.g. (1, 3, 128, 128) or (1, 1, 96, 96, 96) float32.
    Parity: random inputs of batch 1 and 3 through torch and onnxruntime; fails when
    ``max|onnx - torch| > rtol * max(1, max|torch|)``.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} < {MIN_OPSET}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    device = next(model.parameters()).device
    model = model.eval().cpu()
    example = example.detach().float().cpu()
    try:
        proto = onnx.load_from_string(_to_onnx_bytes(model, example, input_name, output_name, opset))
    except Exception as exc:
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {exc}") from exc
    meta = {
        "input_name": input_name,
        "output_name": output_name,
        "input_shape": ["batch", *example.shape[1:]],
        "input_dtype": "float32",
        "exported_at": now_iso(),
        "versions": package_versions(),
        **metadata,
    }
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)

    max_abs = max_rel = 0.0
    if check_parity:
        from common.inference import OnnxModel

        onnx_model = OnnxModel(path)
        gen = torch.Generator().manual_seed(0)
        for batch in (1, 3)[:parity_batches]:
            x = torch.rand((batch, *example.shape[1:]), generator=gen)
            with torch.no_grad():
                ref = model(x).float().numpy()
            got = onnx_model.run(x.numpy())
            diff = float(np.abs(got - ref).max())
            scale = max(1.0, float(np.abs(ref).max()))
            max_abs = max(max_abs, diff)
            max_rel = max(max_rel, diff / scale)
        if max_rel > rtol:
            raise ExportError(f"{path}: ONNX output differs from torch by {max_abs:.3g} "
                              f"(relative {max_rel:.3g} > {rtol:g})")
    model.to(device).train(was_training)
    return ExportReport(path, max_abs, max_rel, opset)


_QUANTIZE_CHILD = """
import json, sys
import numpy as np
from common.export import ExportError, quantize_int8
with np.load(sys.argv[3]) as z:
    batches = [z[k] for k in sorted(z.files, key=int)]
try:
    quantize_int8(sys.argv[1], sys.argv[2], batches, json.loads(sys.argv[4]))
except ExportError as exc:
    sys.exit(str(exc))
"""


def _quantize_int8_in_child(src: Path, dst: Path, batches: list[np.ndarray], metadata: dict[str, Any]) -> Path:
    """``quantize_int8`` in a fresh Python process. onnxruntime's quantizer makes sessions with thread pools of
    their own, which it refuses in a process that ``common.inference.share_thread_pool`` put on the global pool
    (``qc inspect`` or ``score`` earlier in the same Python session)."""
    import os
    import subprocess
    import sys
    import tempfile

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="vsuite-quant-") as tmp:
        data = Path(tmp) / "batches.npz"
        np.savez(data, **{str(i): np.asarray(b, np.float32) for i, b in enumerate(batches)})
        proc = subprocess.run([sys.executable, "-c", _QUANTIZE_CHILD, str(src), str(dst), str(data),
                               json.dumps(metadata)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ExportError(lines[-1] if lines else f"{src}: int8 quantization failed (exit {proc.returncode})")
    return dst


def quantize_int8(src: Path | str, dst: Path | str, batches: list[np.ndarray], metadata: dict[str, Any]) -> Path:
    """Static int8 copy of the fp32 ONNX model ``src`` at ``dst`` (QDQ, per-channel int8 weights, uint8
    activations with MinMax ranges from ``batches``, inputs of the model's first input) with ``src``'s metadata
    plus ``metadata``. On CPUs with VNNI (AVX512/AVX-VNNI) onnxruntime runs it on int8 kernels, about 4x faster
    than fp32 for a ResNet18 on 64 px crops; callers check its agreement with ``src`` before using it."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    if not batches:
        raise ExportError(f"{src}: no calibration data for int8 quantization")
    from common.inference import shared_pool_active

    if shared_pool_active():
        return _quantize_int8_in_child(src, dst, batches, metadata)
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self._it, None)
            return None if x is None else {input_name: np.ascontiguousarray(x, np.float32)}

    with tempfile.TemporaryDirectory(prefix="vsuite-quant-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre))
            quantize_static(str(pre), str(q), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as exc:
            raise ExportError(f"{src}: int8 quantization failed: {exc}") from exc
        proto = onnx.load(str(q))
        kept = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
        set_metadata(proto, {**kept, **{k: _encode(v) for k, v in metadata.items()}})
        tmp_dst = dst.with_name(dst.name + ".tmp")
        onnx.save(proto, str(tmp_dst))
        tmp_dst.replace(dst)
    return dst
