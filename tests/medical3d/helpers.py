"""A medical3d run without training, for the scorer's tests: a 3-node ONNX graph with hand-written metadata, and
small volumes (16-24 voxels a side) written with SimpleITK, so a test scores studies in seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import SimpleITK as sitk
from onnx import TensorProto, helper
from rich.console import Console

from common.rundir import read_run_json, write_run_json
from medical3d.score import score

LABELS = ["normal", "lesion"]
PREPROCESSING = {"modality": "ct", "resample": {"spacing": [2.0, 2.0, 2.0]}, "crop": {"size": [16, 16, 16]}}
META = {"labels": LABELS, "positive_label": "lesion", "threshold": 0.5, "review_band": 0.1, "temperature": 1.0,
        "bias": [0.0, 0.0], "review_low": 0.45, "review_high": 0.55, "preprocessing": PREPROCESSING}
QUIET = Console(quiet=True)


def make_run(folder: Path, meta: dict | None = None, weights: tuple[float, float] = (1.0, -1.0), *,
             reshape_to: int | None = None) -> Path:
    """A medical3d run: (B, 1, 16, 16, 16) -> mean -> linear -> (B, 2) logits, with ``meta`` as its metadata.
    ``reshape_to``: the graph reshapes its input to (-1, reshape_to) first, which fails at run time unless it
    divides 16^3. run.json is written after the model, as training does (it records the model's hash)."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [1, 2], np.asarray(weights, np.float32))
    b = helper.make_tensor("B", TensorProto.FLOAT, [2], np.zeros(2, np.float32))
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])]
    inits = [w, b]
    if reshape_to is not None:
        inits.append(helper.make_tensor("shape", TensorProto.INT64, [2], [-1, reshape_to]))
        nodes.insert(0, helper.make_node("Reshape", ["x", "shape"], ["bad"]))
        nodes[-1] = helper.make_node("Gemm", ["flat", "W", "B"], ["pre"])
        nodes += [helper.make_node("ReduceSum", ["bad"], ["total"], keepdims=0),
                  helper.make_node("Add", ["pre", "total"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny_med", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 16, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (META if meta is None else meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)  # NaN goes in as the token NaN, as a careless writer would
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    write_run_json(folder, vertical="medical3d", labels=LABELS, config={}, data_fingerprint="test", metrics={},
                   model="model.onnx")
    return folder


def phantom(size: int = 20, dtype=np.int16, seed: int = 0) -> np.ndarray:
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32)
    c = (size - 1) / 2
    vol = np.where((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 < (size * 0.4) ** 2, 120.0, -100.0)
    return (vol + np.random.default_rng(seed).normal(0, 10, vol.shape)).astype(dtype)


def write(arr: np.ndarray, path: Path | bytes, spacing: float = 1.5, compress: bool = True) -> Path:
    """Write a volume; a bytes path (a name that is not UTF-8) is written under a plain name and renamed."""
    target = Path(os.fsdecode(path))
    plain = target.with_name("plain_tmp" + "".join(target.suffixes[-2:]))
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((spacing,) * 3)
    sitk.WriteImage(img, str(plain), compress)
    os.rename(plain, target)
    return target


def cut(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def run_score(run: Path, inputs: list, out: Path) -> list[dict]:
    return score(run, [os.fsdecode(i) for i in inputs], out, console=QUIET, run=read_run_json(run))


def by_name(records: list[dict]) -> dict[str, dict]:
    return {os.path.basename(r["source"]): r for r in records}
