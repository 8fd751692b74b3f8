"""The part classifier's ONNX file (industrial_qc.part_export): outputs ``logits`` and ``cam`` (the class activation
maps, computed in the graph) and the int8 line copy, used only when it agrees with fp32."""

from __future__ import annotations

import numpy as np
import torch
from rich.console import Console

from common.inference import OnnxModel, softmax
from industrial_qc import quantize
from industrial_qc.classifier import build_classifier
from industrial_qc.part_export import (
    PART_INT8,
    PART_ONNX,
    PartCamNet,
    export_part_classifier,
    line_part_classifier,
)
from industrial_qc.parts import to_input

QUIET = Console(quiet=True)


def test_the_exported_cam_is_the_class_activation_map(tmp_path):
    net = build_classifier("resnet18", 3, "standard", None).eval()
    path = tmp_path / PART_ONNX
    worst = export_part_classifier(net, 64, path, {"mode": "part", "labels": ["good", "a", "b"]})
    assert worst < 1e-4
    model = OnnxModel(path)
    assert model.output_names == ["logits", "cam"] and model.metadata["outputs"] == ["logits", "cam"]
    x = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    logits, cam = model.run_all(x)
    assert logits.shape == (2, 3) and cam.shape == (2, 3, 2, 2)
    # global average pooling + a linear head: each logit is its map's mean plus the bias
    assert np.allclose(cam.mean(axis=(2, 3)) + net.fc.bias.detach().numpy(), logits, atol=1e-4)
    with torch.no_grad():
        ref_logits, ref_cam = PartCamNet(net)(torch.from_numpy(x))
    assert np.allclose(ref_cam.numpy(), cam, atol=1e-4) and np.allclose(ref_logits.numpy(), logits, atol=1e-4)


def test_int8_is_the_line_model_only_when_it_agrees(tmp_path, monkeypatch):
    net = build_classifier("resnet18", 2, "standard", None).eval()
    fp32 = tmp_path / PART_ONNX
    export_part_classifier(net, 64, fp32, {"mode": "part", "labels": ["good", "bad"]})
    images = np.random.default_rng(2).integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)
    line = line_part_classifier("int8", fp32, images, images[:6], "imagenet", 1.0, QUIET)
    assert line.int8_check is not None and line.int8_check["crops"] == 6
    if line.int8_check["used"]:
        assert line.model.path.name == PART_INT8 and (tmp_path / PART_INT8).is_file()
        assert line.model.metadata["val_agreement"]["used"] is True
    monkeypatch.setattr(quantize, "INT8_MEAN_DIFF", -1.0)  # no copy can agree now
    line = line_part_classifier("int8", fp32, images, images[:6], "imagenet", 1.0, QUIET)
    assert line.int8_check["used"] is False and line.model.path == fp32 and not (tmp_path / PART_INT8).exists()
    fp = line_part_classifier("fp32", fp32, images, images[:6], "imagenet", 1.0, QUIET)
    assert fp.int8_check is None and fp.model.path == fp32
    ref = softmax(OnnxModel(fp32).run_all(to_input(images[:6], "imagenet"))[0])
    assert np.allclose(fp.val_probs, ref)
