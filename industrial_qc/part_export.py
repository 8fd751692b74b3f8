"""The part classifier as the line runs it: a self-describing ONNX file with two outputs, ``logits`` (B, C) and
``cam`` (B, C, h, w), and its int8 copy, used only when it agrees with fp32 on the val parts.

For a ResNet (global average pooling, then one linear layer) Grad-CAM of the last conv stage equals the class
activation map ``sum_k fc.weight[c, k] * A_k`` up to a positive scale, so the graph computes it: inference gets
the heatmap of every class without a backward pass. ReLU and normalisation are left to the reader (numpy).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console
from torch import nn

from common.export import MIN_OPSET, ExportError, quantize_int8, set_metadata, write_metadata
from common.inference import OnnxModel, softmax
from common.results import now_iso
from common.rundir import package_versions
from industrial_qc.parts import to_input
from industrial_qc.quantize import int8_agreement

PART_ONNX = "part_classifier.onnx"
PART_INT8 = "part_classifier.int8.onnx"
OUTPUTS = ("logits", "cam")
CALIBRATION_IMAGES = 64  # training parts whose activations set the int8 ranges
PARITY_RTOL = 1e-4


class PartCamNet(nn.Module):
    """A torchvision ResNet returning its logits (B, C) and the class activation maps of its last conv stage
    (B, C, S/32, S/32); the weights are the ResNet's own."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        features = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        logits = n.fc(torch.flatten(n.avgpool(features), 1))
        cam = torch.einsum("ck,bkhw->bchw", n.fc.weight, features)
        return logits, cam


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}, "cam": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, input_names=["input"], output_names=list(OUTPUTS),
                          opset_version=MIN_OPSET, dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def export_part_classifier(net: nn.Module, size: int, path: Path, metadata: dict) -> float:
    """Write ``path`` (input ``input`` (B, 3, size, size) float32; outputs ``logits``, ``cam``) with
    ``metadata`` attached; returns the largest relative difference from torch on random inputs (ExportError
    beyond ``PARITY_RTOL``)."""
    device = next(net.parameters()).device
    model = PartCamNet(net).eval().cpu()
    example = torch.zeros(1, 3, size, size)
    try:
        proto = onnx.load_from_string(_onnx_bytes(model, example))
    except Exception as exc:
        raise ExportError(f"ONNX export of the part classifier failed: {exc}") from exc
    set_metadata(proto, {"input_name": "input", "output_name": "logits", "outputs": list(OUTPUTS),
                         "input_shape": ["batch", 3, size, size], "input_dtype": "float32",
                         "exported_at": now_iso(), "versions": package_versions(), **metadata})
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    worst = _parity(model, OnnxModel(path), size)
    net.to(device)
    if worst > PARITY_RTOL:
        raise ExportError(f"{path}: ONNX outputs differ from torch by {worst:.3g} (relative) > {PARITY_RTOL:g}")
    return worst


def _parity(model: nn.Module, onnx_model: OnnxModel, size: int) -> float:
    """Largest relative difference of either output between torch and onnxruntime, on batches of 1 and 3."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in (1, 3):
        x = torch.rand((batch, 3, size, size), generator=gen)
        with torch.no_grad():
            ref = [t.float().numpy() for t in model(x)]
        for r, g in zip(ref, onnx_model.run_all(x.numpy()), strict=True):
            worst = max(worst, float(np.abs(g - r).max()) / max(1.0, float(np.abs(r).max())))
    return worst


def onnx_probs(model: OnnxModel, images: np.ndarray, normalize: str, temperature: float,
               batch: int = 64) -> np.ndarray:
    """(N, C) calibrated class probabilities of ``model`` on (N, S, S, 3) uint8 parts."""
    out = [model.run_all(to_input(images[i : i + batch], normalize))[0] for i in range(0, len(images), batch)]
    return softmax(np.concatenate(out), temperature) if out else np.zeros((0, len(model.labels)))


@dataclass
class LinePart:
    """The model file the line runs, its probabilities (N, C) on the val parts, and how int8 compared."""

    model: OnnxModel
    val_probs: np.ndarray
    int8_check: dict | None


def line_part_classifier(precision: str, fp32_path: Path, train_images: np.ndarray, val_images: np.ndarray,
                         normalize: str, temperature: float, console: Console) -> LinePart:
    """``part.line_precision`` int8: the int8 copy (calibrated on up to CALIBRATION_IMAGES training parts) when
    its defect probabilities agree with fp32's on the val parts (``quantize.int8_agreement``), else fp32."""
    fp32 = OnnxModel(fp32_path)
    int8_path = fp32_path.with_name(PART_INT8)
    int8_path.unlink(missing_ok=True)  # a stale copy from an earlier run in this folder
    ref = onnx_probs(fp32, val_images, normalize, temperature)
    if precision != "int8":
        return LinePart(fp32, ref, None)
    try:
        idx = np.unique(np.linspace(0, len(train_images) - 1, min(CALIBRATION_IMAGES, len(train_images))).astype(int))
        batches = [to_input(train_images[idx[i : i + 16]], normalize) for i in range(0, len(idx), 16)]
        quantize_int8(fp32_path, int8_path, batches, {"precision": "int8", "calibration_images": len(idx)})
    except ExportError as exc:
        console.print(f"[yellow]  {exc}; the line uses the fp32 part classifier[/]")
        return LinePart(fp32, ref, None)
    int8 = OnnxModel(int8_path)
    got = onnx_probs(int8, val_images, normalize, temperature)
    check = int8_agreement([ref], [got])  # column 0 is the good class: its change is the defect score's
    if check["used"]:
        write_metadata(int8_path, {"val_agreement": check})
        console.print(f"  line model: int8 ({PART_INT8}); defect score vs fp32 on {check['crops']} val parts: "
                      f"mean |diff| {check['mean_abs_diff']:.4f}, same class {check['same_class']:.3f}")
        return LinePart(OnnxModel(int8_path), got, check)
    console.print(f"[yellow]  line model: fp32; the int8 copy moved defect scores by {check['mean_abs_diff']:.3f} "
                  f"on average ({check['share_diff_over_0.1']:.1%} by more than 0.1)[/]")
    int8_path.unlink()
    return LinePart(fp32, ref, check)


def store_part_thresholds(thresholds: dict, paths: Sequence[Path]) -> None:
    """Write the thresholds into each model file (their one home; the line reads them from there)."""
    for p in dict.fromkeys(paths):
        write_metadata(p, {"thresholds": thresholds})
