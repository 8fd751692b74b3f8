"""``vsuite qc eval``: detector mAP (Ultralytics validation), classifier accuracy on ground-truth crops, pipeline
per-class precision/recall and the part-level escape and false-reject rates, from a run directory.

Only the detector mAP step imports Ultralytics (and so torch); everything else runs the ONNX files. A
part-classifier run (run.json ``mode: part``) is evaluated by ``industrial_qc.part_eval``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.metrics import classification_metrics
from common.progress import add_task, make_progress, update_rate
from common.rundir import read_run_json, update_run_json
from industrial_qc.crops import box_iou
from industrial_qc.cropset import CropSet, build_crop_set
from industrial_qc.data import Sample, load_dataset, read_image, write_resolved_yaml
from industrial_qc.part_eval import evaluate_part_run, part_summary
from industrial_qc.part_pipeline import run_mode
from industrial_qc.pipeline import OnnxClassifier, Pipeline
from industrial_qc.verdict import part_rates


def match_defects(results: Sequence[dict], samples: Sequence[Sample], names: list[str],
                  iou_thr: float = 0.3) -> dict:
    """Per-class precision/recall of the reported defects against ground truth (same class, IoU >= iou_thr,
    greedy by defect probability), plus class-agnostic localisation recall. ``per_class`` counts every reported
    defect (REVIEW level and above: what a reviewer is shown); ``per_class_fail`` only the FAIL-level ones (what
    rejects a part on its own)."""
    n_gt = dict.fromkeys(names, 0)
    found_any, total_gt = 0, 0
    levels = {"per_class": lambda d: True, "per_class_fail": lambda d: d.get("level", "fail") == "fail"}
    tp = {k: dict.fromkeys(names, 0) for k in levels}
    n_pred = {k: dict.fromkeys(names, 0) for k in levels}
    for res, s in zip(results, samples, strict=True):
        if res.get("status", "ok") != "ok":
            continue
        h, w = res["height"], res["width"]
        gt = s.boxes_xyxy(w, h)
        gt_cls = [names[c] for c in s.classes]
        for c in gt_cls:
            n_gt[c] += 1
        total_gt += len(gt)
        if len(gt) and res["defects"]:
            pb = np.array([d["box"] for d in res["defects"]], np.float32)
            found_any += int((box_iou(pb, gt).max(axis=0) >= iou_thr).sum())
        for key, keep in levels.items():
            preds = [d for d in res["defects"] if keep(d)]
            for d in preds:
                n_pred[key][d["class"]] = n_pred[key].get(d["class"], 0) + 1
            if not len(gt) or not preds:
                continue
            iou = box_iou(np.array([d["box"] for d in preds], np.float32), gt)
            used = np.zeros(len(gt), bool)
            for i, d in enumerate(preds):  # already sorted by defect probability
                cand = [(iou[i, j], j) for j in range(len(gt))
                        if not used[j] and gt_cls[j] == d["class"] and iou[i, j] >= iou_thr]
                if cand:
                    used[max(cand)[1]] = True
                    tp[key][d["class"]] += 1
    out = {
        key: {c: {"precision": tp[key][c] / n_pred[key][c] if n_pred[key][c] else None,
                  "recall": tp[key][c] / n_gt[c] if n_gt[c] else None,
                  "tp": tp[key][c], "predicted": n_pred[key][c], "ground_truth": n_gt[c]} for c in names}
        for key in levels
    }
    return {**out, "localisation_recall": found_any / total_gt if total_gt else None, "match_iou": iou_thr}


def run_pipeline_on(pipe: Pipeline, samples: Sequence[Sample], progress=None) -> list[dict]:
    """Inspect every sample; unreadable images become error results (never an exception). ``progress()`` is
    called after each sample."""
    out = []
    for s in samples:
        try:
            img = read_image(s.image)
        except InputError as exc:
            out.append({"status": "error", "reason": str(exc)})
        else:
            res = pipe.inspect(img)
            res.update(status="ok", height=img.shape[0], width=img.shape[1])
            out.append(res)
        if progress is not None:
            progress()
    return out


def pipeline_metrics(results: Sequence[dict], samples: Sequence[Sample], names: list[str], iou_thr: float) -> dict:
    ok = [(r, s) for r, s in zip(results, samples, strict=True) if r.get("status", "ok") == "ok"]
    rates = part_rates([r["verdict"] for r, _ in ok], [s.defective for _, s in ok])
    match = match_defects([r for r, _ in ok], [s for _, s in ok], names, iou_thr)
    return {"parts": rates, "defects": match}


def gt_crop_set(clf: OnnxClassifier, samples: Sequence[Sample], seed: int = 0) -> CropSet:
    """The ground-truth crops of ``samples`` in ``clf``'s crop geometry, plus as many random defect-free windows
    as background."""
    return build_crop_set(samples, crop_size=clf.crop_size, context=clf.context, min_crop=clf.min_crop,
                          background_per_defect=1.0, seed=seed + 7)


def classifier_gt_metrics(clf: OnnxClassifier, samples: Sequence[Sample], seed: int = 0,
                          crops: CropSet | None = None) -> dict:
    """Stage 2 alone on ground-truth crops (plus as many random defect-free windows as background); ``crops``:
    ``gt_crop_set`` made already, in the same crop geometry."""
    cs = gt_crop_set(clf, samples, seed) if crops is None else crops
    if len(cs) == 0:
        return {}
    probs = np.concatenate([clf.probs(cs.crops[i : i + 256]) for i in range(0, len(cs), 256)])
    allm = classification_metrics(cs.targets, probs, clf.labels)
    d = cs.targets > 0
    gt_only = float((probs[d].argmax(axis=1) == cs.targets[d]).mean()) if d.any() else None
    return {"accuracy_gt_crops": gt_only, "n_gt_crops": int(d.sum()), "with_background": allm,
            "model": clf.model.path.name}


def classifier_gt_metrics_all_splits(clf: OnnxClassifier, data_yaml: Path, names: list[str]) -> dict:
    """``classifier_gt_metrics`` on every split of ``data_yaml`` together (a held-out set: none was trained on)."""
    ds = load_dataset(data_yaml, ("train", "val", "test"), required=())
    if ds.names != names:
        raise InputError(f"{data_yaml}: classes {ds.names} differ from the classifier's {names}")
    return classifier_gt_metrics(clf, [s for split in ("train", "val", "test") for s in ds.split(split)])


def evaluate_run(run_dir: Path, data_yaml: Path, split: str = "test", *, console=None, detector_map: bool = True,
                 iou_thr: float | None = None) -> dict:
    """All metrics of a run on one split; written to ``run_dir/metrics.json`` under ``eval.<split>``. For a part
    run ``data_yaml`` is its image-level dataset (``industrial_qc.part_eval.evaluate_part_run``)."""
    run_dir = Path(run_dir)
    run = read_run_json(run_dir)
    if run_mode(run, run_dir) == "part":
        return evaluate_part_run(run_dir, data_yaml, split, console=console, run=run)
    ds = load_dataset(data_yaml, (split,), required=())
    names = list(run["labels"])[1:]
    if ds.names != names:
        raise InputError(f"{data_yaml}: classes {ds.names} differ from the run's {names}")
    samples = ds.split(split)
    pipe = Pipeline.from_run(run_dir, run=run)
    iou_thr = iou_thr if iou_thr is not None else float(run.get("config", {}).get("verdict", {}).get("match_iou", 0.3))
    metrics: dict = {"split": split, "data": str(data_yaml), "images": len(samples)}
    with make_progress(console) as progress:
        if detector_map:
            from industrial_qc.detector import validate_detector

            task = add_task(progress, f"detector mAP on {split}", total=None, info="Ultralytics val, 2 passes")
            resolved = write_resolved_yaml(ds, run_dir / "eval" / f"data_{split}.yaml")
            metrics["detector"] = validate_detector(run_dir / "detector.onnx", resolved, split,
                                                    pipe.detector.imgsz[0], run_dir / "eval",
                                                    flatfield=pipe.detector.flatfield)
            progress.update(task, total=1, completed=1)
        task = add_task(progress, "classifier on ground-truth crops", total=None)
        crops = gt_crop_set(pipe.classifier, samples)
        metrics["classifier"] = classifier_gt_metrics(pipe.classifier, samples, crops=crops)
        fp32_path = run_dir / "classifier.onnx"
        if pipe.classifier.model.path != fp32_path and fp32_path.is_file():  # the line runs the int8 copy
            # on the same crops: the int8 copy carries fp32's crop geometry in its metadata
            metrics["classifier_fp32"] = classifier_gt_metrics(OnnxClassifier(fp32_path), samples, crops=crops)
        progress.update(task, total=1, completed=1)
        task = add_task(progress, f"inspect {split}", total=len(samples))

        def step() -> None:
            progress.update(task, advance=1)
            update_rate(progress, task, "part")

        results = run_pipeline_on(pipe, samples, step)
    metrics["pipeline"] = pipeline_metrics(results, samples, names, iou_thr)
    metrics["thresholds"] = {"fail": pipe.fail_threshold, "review": pipe.review_threshold}
    path = run_dir / "metrics.json"
    all_metrics = json.loads(path.read_text()) if path.is_file() else {}
    all_metrics.setdefault("eval", {})[split] = metrics
    path.write_text(json.dumps(all_metrics, indent=2))
    run_metrics = dict(run.get("metrics", {}))
    run_metrics[f"eval_{split}"] = summary(metrics)
    update_run_json(run_dir, metrics=run_metrics)
    return metrics


def summary(metrics: dict) -> dict:
    """The headline numbers of an eval (for run.json and the CLI table)."""
    if metrics.get("mode") == "part":
        return part_summary(metrics)
    parts = metrics.get("pipeline", {}).get("parts", {})
    det = metrics.get("detector", {})
    return {
        "detector_mAP50": det.get("mAP50"),
        "detector_mAP50_95": det.get("mAP50_95"),
        "detector_mAP50_agnostic": det.get("agnostic", {}).get("mAP50"),
        "classifier_accuracy_gt_crops": metrics.get("classifier", {}).get("accuracy_gt_crops"),
        "escape_rate": parts.get("escape_rate"),
        "false_reject_rate": parts.get("false_reject_rate"),
        "review_rate_good": parts.get("review_rate_good"),
        "review_rate_defective": parts.get("review_rate_defective"),
    }
