"""A hand-built part classifier for the part-pipeline tests: a tiny torch conv net whose features light up on
bright and on black spots, exported through torch.onnx with the ``logits`` and ``cam`` outputs and the metadata a
part-classifier run carries, plus a run folder around it. So the tests know what the model sees: a plain dark part
is good, a bright spot makes it a scratch, a black one a pit, and the CAM is hot where the spot is.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from torch import nn

from common.export import set_metadata
from common.rundir import write_run_json

LABELS = ["good", "scratch", "pit"]
SIZE = 64


class SpotNet(nn.Module):
    """conv (stride 2) -> ReLU -> [bright-spot map, black-spot map, constant map]; global average pool -> linear
    head. ``cam`` is sum_k fc.weight[c, k] * A_k, as the exported part classifiers compute it."""

    def __init__(self, n_classes: int, nan: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3, n_classes)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = 1.0 / 27  # the mean of the normalised 3x3x3 neighbourhood above 1 std ...
            self.conv.weight[1] = -1.0 / 27  # ... below -1.5 std (the part itself sits near -1) ...
            self.conv.bias.copy_(torch.tensor([-1.0, -1.5, 1.0]))  # ... and a constant 1
            w = torch.zeros(n_classes, 3)
            w[0, 2] = 3.0  # good: the constant
            w[1:, 0] = torch.linspace(100.0, 50.0, n_classes - 1)  # defects: bright spots, the first class most
            if n_classes > 2:
                w[2, 0], w[2, 1] = 0.0, 200.0  # the second defect class: black spots
            self.fc.weight.copy_(w)
            self.fc.bias.fill_(float("nan") if nan else 0.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.relu(self.conv(x))
        return self.fc(a.mean(dim=(2, 3))), torch.einsum("ck,bkhw->bchw", self.fc.weight, a)


def part_metadata(**changes) -> dict:
    """The metadata a part classifier carries (``changes`` replace keys; a value None removes the key)."""
    md = {"mode": "part", "labels": LABELS, "good_label": "good", "input_size": SIZE, "normalize": "imagenet",
          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "pad", "temperature": 1.0,
          "thresholds": {"fail": 0.8, "review": 0.4, "score": "part"}, "arch": "spotnet"}
    md.update(changes)
    return {k: v for k, v in md.items() if v is not None}


def export_part_model(path: Path, *, nan: bool = False, outputs: int | None = None, **changes) -> Path:
    """``SpotNet`` as ONNX at ``path`` with ``part_metadata(**changes)``; ``outputs`` classes (default: one per
    label)."""
    n_classes = outputs or len(changes.get("labels") or LABELS)
    net = SpotNet(n_classes, nan=nan).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), buf, input_names=["input"],
                          output_names=["logits", "cam"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "cam": {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    set_metadata(proto, part_metadata(**changes))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def make_part_run(run_dir: Path, *, nan: bool = False, outputs: int | None = None, run_fields: dict | None = None,
                  **changes) -> Path:
    """A part-classifier run folder: part_classifier.onnx (``export_part_model``) and run.json as training
    writes it (``run_fields`` replace run.json keys)."""
    export_part_model(run_dir / "part_classifier.onnx", nan=nan, outputs=outputs, **changes)
    md = part_metadata(**changes)
    labels = md.get("labels")
    fields = {"mode": "part", "good_label": md.get("good_label"),
              "labels": list(labels) if isinstance(labels, list) else LABELS,
              "models": {"classifier": "part_classifier.onnx", "line": "part_classifier.onnx"},
              "config": {"input": {"max_pixels": 100_000_000, "min_side": 32}},
              **(run_fields or {})}
    write_run_json(run_dir, vertical="industrial_qc", labels=fields.pop("labels"), config=fields.pop("config"),
                   data_fingerprint="test", metrics={}, **fields)
    return run_dir


def part_image(spot: tuple[int, int, int] | None = None, hw: tuple[int, int] = (SIZE, SIZE), seed: int = 0,
               value: int = 250) -> np.ndarray:
    """A dark textured part (H, W, 3) uint8 BGR, with a square (x, y, side) of grey ``value`` when ``spot`` is
    given (bright: a scratch to the model, 0: a pit)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(60, 6, (*hw, 3)), 0, 255).astype(np.uint8)
    if spot is not None:
        x, y, s = spot
        img[y : y + s, x : x + s] = value
    return img


def write_part_image(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), part_image(**kw))
    return path


def read_metadata(path: Path) -> dict:
    return {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}


def make_part_case(root: Path) -> dict:
    """A part-classifier run and ``line_out/results.jsonl`` written by the line (``vsuite qc inspect``): parts
    00 PASS, 01 FAIL (scratch), 02 REVIEW (scratch), 03 FAIL (pit) whose heatmap file was removed afterwards (the
    app computes it)."""
    from rich.console import Console

    from industrial_qc.line import InspectOptions, run_line

    run_dir = make_part_run(root / "runs" / "part-test", thresholds={"fail": 0.8, "review": 0.5, "score": "part"})
    images = root / "parts"
    for i, (spot, value) in enumerate(((None, 0), ((30, 8, 20), 250), ((20, 20, 12), 250), ((4, 40, 16), 0))):
        write_part_image(images / f"part_{i:02d}.png", spot=spot, seed=i, value=value)
    out = root / "line_out"
    run_line(run_dir, str(images), out, InspectOptions(settle=0.0), console=Console(quiet=True))
    (out / "heatmaps" / "part_03.png").unlink()
    return {"root": root, "run_dir": run_dir, "images": images, "results": out / "results.jsonl",
            "db": out / "reviews.sqlite", "run": json.loads((run_dir / "run.json").read_text())}
