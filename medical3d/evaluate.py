"""``vsuite med eval``: metrics of a run on a manifest split, predictions, plots and 3D Grad-CAM maps.

Writes ``RUN/eval/<split>/``: metrics.json, predictions.csv, plots/*.png and gradcam/<study>_{image,cam}.nii.gz
(the CAM on the preprocessed grid, same origin/spacing/direction) with <study>_cam.png (three views through
the hottest voxel). The metrics are also merged into run.json under ``eval.<split>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from rich.console import Console

from common.checkpoints import load_checkpoint
from common.config import config_section
from common.errors import InputError
from common.inference import OnnxModel
from common.results import write_records
from common.rundir import read_run_json, update_run_json, verify_model_file
from medical3d import plots
from medical3d.config import DEFAULT_CONFIG, MedicalConfig
from medical3d.data import PreprocessCache
from medical3d.io import study_id
from medical3d.models import GRADCAM_LAYERS, build_model
from medical3d.operating import rule_tradeoff
from medical3d.train import configure_runtime, load_split_cases, prepare_with_progress
from medical3d.tta import tta_logits
from medical3d.verdict import DecisionRule, decision_metrics


def load_run_model(run_dir: Path) -> tuple[torch.nn.Module, MedicalConfig, DecisionRule, dict]:
    """The best checkpoint of a run as an eval-mode torch model, with its config and the decision rule (from
    model.onnx's metadata, its one home)."""
    run = read_run_json(run_dir)
    if run.get("vertical") != "medical3d":
        raise InputError(f"{run_dir}/run.json: vertical is {run.get('vertical')!r}, not medical3d")
    cfg = config_section(MedicalConfig, DEFAULT_CONFIG, "", **run["config"])
    ckpt = load_checkpoint(Path(run_dir) / "checkpoints" / "best.pt")
    model_path = Path(run_dir) / "model.onnx"
    verify_model_file(run, model_path)
    rule = DecisionRule.from_metadata(OnnxModel(model_path).metadata, source=f"{model_path} metadata")
    model = build_model(cfg.model, len(rule.labels))
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg, rule, run


@torch.no_grad()
def predict_logits(model: torch.nn.Module, arrays: list[np.ndarray], batch_size: int = 4, tta: str = "none"
                   ) -> np.ndarray:
    """(N, C) logits for (1, D, H, W) arrays; ``tta`` (``cfg.model.tta``): mean logits over ``medical3d.tta``'s
    views, as the scorer computes them from model.onnx."""
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).float().numpy()

    out = [tta_logits(run, np.stack(arrays[i:i + batch_size]), tta) for i in range(0, len(arrays), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def write_gradcam(model: torch.nn.Module, network: str, image_path: Path, class_idx: int, out_dir: Path, name: str
                  ) -> dict:
    """Grad-CAM of ``class_idx`` for one preprocessed study: NIfTI aligned with the volume, plus a PNG."""
    from common.explain import grad_cam

    image = sitk.ReadImage(str(image_path))
    vol = sitk.GetArrayFromImage(image).astype(np.float32)
    cam = grad_cam(model, torch.from_numpy(vol)[None, None], GRADCAM_LAYERS[network], class_idx)
    cam_img = sitk.GetImageFromArray(cam.astype(np.float32))
    cam_img.CopyInformation(image)
    out_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(out_dir / f"{name}_image.nii.gz"), True)
    sitk.WriteImage(cam_img, str(out_dir / f"{name}_cam.nii.gz"), True)
    z, y, x = plots.gradcam_views(out_dir / f"{name}_cam.png", vol, cam, title=name)
    hottest_mm = image.TransformIndexToPhysicalPoint((x, y, z))
    return {"cam": str(out_dir / f"{name}_cam.nii.gz"), "png": str(out_dir / f"{name}_cam.png"),
            "hottest_mm": [round(v, 2) for v in hottest_mm]}


def evaluate_run(run_dir: Path, manifest: Path, split: str = "test", *, console: Console | None = None,
                 gradcam_limit: int | None = None) -> dict:
    """Evaluate the run's best checkpoint on ``split`` of ``manifest`` (``all`` for every study)."""
    console = console or Console()
    model, cfg, rule, _ = load_run_model(run_dir)
    configure_runtime(cfg.runtime)
    cases, _ = load_split_cases(manifest, cfg)
    chosen = cases if split == "all" else [c for c in cases if c.split == split]
    if not chosen:
        raise InputError(f"{manifest}: no studies in split {split!r}")
    unknown = sorted({c.label for c in chosen} - set(rule.labels))
    if unknown:
        raise InputError(f"{manifest}: labels {unknown} are not among the run's labels {rule.labels}")
    cache = PreprocessCache(cfg.data.cache_dir)
    prepared = prepare_with_progress(chosen, cfg.preprocess, cache, console, description=f"preprocess {split}")
    if not prepared.cases:
        raise InputError(f"{manifest}: every study of split {split!r} failed preprocessing")
    y = np.array([rule.labels.index(c.label) for c in prepared.cases], dtype=np.int64)
    logits = predict_logits(model, prepared.arrays, cfg.train.batch_size, cfg.model.tta)
    probs = rule.probabilities(logits)
    metrics = decision_metrics(y, probs, rule)
    metrics.update({"split": split, "failed": len(prepared.failures), "manifest": str(manifest)})
    if len(rule.labels) == 2:  # sensitivity, specificity, REVIEW share per threshold (medical3d.operating)
        metrics["tradeoff"] = rule_tradeoff(y, probs, rule)

    out_dir = Path(run_dir) / "eval" / split
    plots.write_all(out_dir / "plots", y, probs, rule, title=split)
    verdicts = rule.verdicts(probs)
    predicted = rule.predicted_labels(probs)
    rows = []
    for case, p, v, lab in zip(prepared.cases, probs, verdicts, predicted, strict=True):
        rows.append({"source": str(case.path), "true_label": case.label, "label": lab, "verdict": v,
                     **{f"p_{name}": float(p[i]) for i, name in enumerate(rule.labels)}})

    limit = cfg.runtime.gradcam_limit if gradcam_limit is None else gradcam_limit
    # Grad-CAM for the studies most likely positive first: those are the ones a reader checks.
    order = np.argsort(-probs[:, rule.positive_index])[:limit]
    cams = []
    for i in order:
        name = study_id(prepared.cases[i].path)
        cached = cache.get(prepared.cases[i].path, cfg.preprocess)
        cam = write_gradcam(model, cfg.model.network, cached.image_path, rule.positive_index, out_dir / "gradcam",
                            name)
        rows[i].update({"gradcam": cam["cam"], "gradcam_png": cam["png"], "hottest_mm": cam["hottest_mm"]})
        cams.append(cam)
    write_records(rows + [{"source": f["source"], "true_label": f["label"], "status": "error",
                           "reason": f["reason"]} for f in prepared.failures], out_dir / "predictions.csv")
    metrics["gradcam"] = len(cams)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    run = read_run_json(run_dir)
    update_run_json(run_dir, eval={**run.get("eval", {}), split: metrics})
    metrics["out_dir"] = str(out_dir)
    return metrics
