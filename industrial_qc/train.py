"""``vsuite qc train``: both stages under one time budget, then thresholds, plots and the run directory.

    runs/<name>/
      run.json  detector.onnx  classifier.onnx  classifier.int8.onnx (the line's copy, unless
      classifier.line_precision is fp32 or it disagreed with fp32 on val)  metrics.json  data.yaml (resolved copy)
      checkpoints/detector_best.pt detector_last.pt classifier/best.pt classifier/last.pt
      plots/confusion_matrix.png  pr_curve.png
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from common.config import config_snapshot
from common.errors import InputError
from common.export import ExportError, quantize_int8, write_metadata
from common.progress import add_task, make_progress, update_rate
from common.rundir import write_run_json
from common.runtime import pick_device, seed_everything, set_torch_threads
from industrial_qc.config import ClassifierConfig, QCConfig, VerdictConfig
from industrial_qc.crops import BACKGROUND_GAP, defect_free
from industrial_qc.cropset import TRAIN_MARGIN, CropSet, build_crop_set, defect_rel_sizes
from industrial_qc.data import (
    Sample,
    defect_scale,
    fingerprint,
    image_size,
    load_dataset,
    read_image,
    small_defect_warning,
    write_resolved_yaml,
)
from industrial_qc.evaluate import pipeline_metrics
from industrial_qc.pipeline import LINE_CLASSIFIER_INT8, Detections, OnnxClassifier, OnnxDetector, Pipeline
from industrial_qc.verdict import PartSample, Thresholds, candidate_scores, choose_thresholds

# Seconds kept back from the budget for ONNX export, hard-negative mining, thresholds and plots.
MIN_RESERVE_S = 15.0
MIN_BACKGROUND_SHARE = 0.25  # background crops per defect crop below which training warns (usually ~1)
CALIBRATION_IMAGES = 64  # training images whose crops set the int8 activation ranges
# The int8 classifier replaces fp32 on the line only if, over the val candidates, its defect probability moves by
# at most INT8_MEAN_DIFF on average and by more than 0.1 on at most INT8_BIG_DIFF_SHARE of them.
INT8_MEAN_DIFF = 0.02
INT8_BIG_DIFF_SHARE = 0.02
# Train parts scored for the verdict thresholds (verdict.reference: train+val): at most this many (about 15 ms
# each on 2 CPU cores), and at least the second number even when the training budget has run out.
MAX_REFERENCE_TRAIN_PARTS = 2000
MIN_REFERENCE_TRAIN_PARTS = 100


@dataclass
class TrainOutcome:
    run_dir: Path
    run: dict
    metrics: dict


def _detect_all(detector: OnnxDetector, samples: list[Sample], progress, label: str) -> list[Detections]:
    task = add_task(progress, label, total=len(samples))
    out = []
    for s in samples:
        out.append(detector(read_image(s.image)))
        progress.update(task, advance=1)
        update_rate(progress, task, "img")
    return out


def part_sample(vcfg: VerdictConfig, samples: list[Sample], dets: list[Detections], probs: list[np.ndarray],
                gt: list[np.ndarray]) -> PartSample:
    """The thresholds' view of some parts from their line detections, class probabilities (K, C) and ground-truth
    boxes in pixels: each part's highest candidate score (0 without candidates) and, with
    ``fail_from_defect_free_regions``, each defective part's highest score among its candidates that touch no
    labelled defect (the rule hard negatives follow): what it would score if it were good."""
    cand = [candidate_scores(1.0 - p[:, 0], d.scores, vcfg.score) for d, p in zip(dets, probs, strict=True)]
    scores = np.array([float(c.max()) if len(c) else 0.0 for c in cand])
    free = None
    if vcfg.fail_from_defect_free_regions:
        free = []
        for s, d, c, g in zip(samples, dets, cand, gt, strict=True):
            if s.defective:
                keep = defect_free(d.boxes, g)
                free.append(float(c[keep].max()) if keep.any() else 0.0)
    return PartSample(scores, np.array([s.defective for s in samples], bool), None if free is None else np.array(free))


def val_thresholds(vcfg: VerdictConfig, val: PartSample, train: PartSample | None = None) -> Thresholds:
    """The verdict thresholds from the val parts and, with ``reference: train+val``, the train parts."""
    return choose_thresholds(val.scores, val.defective, target_recall=vcfg.target_recall,
                             max_false_reject=vcfg.max_false_reject, min_review=vcfg.min_review_threshold,
                             max_review=vcfg.max_review_threshold, min_fail=vcfg.min_fail_threshold,
                             defect_free_scores=val.defect_free,
                             train=train if vcfg.reference == "train+val" else None, score=vcfg.score,
                             recall_confidence=vcfg.recall_confidence)


def _gt_boxes(samples: list[Sample]) -> list[np.ndarray]:
    out = []
    for s in samples:
        out.append(s.boxes_xyxy(*image_size(s.image)))
    return out


def train_reference(vcfg: VerdictConfig, classifier: OnnxClassifier, train: list[Sample], dets: list[Detections],
                    seed: int, deadline: float | None, max_parts: int = MAX_REFERENCE_TRAIN_PARTS,
                    min_parts: int = MIN_REFERENCE_TRAIN_PARTS, console: Console | None = None) -> PartSample:
    """The train split's parts for the thresholds, scored by the line's models: up to ``max_parts`` of them in a
    seeded random order, and after ``deadline`` (time.monotonic; the training budget) no more than ``min_parts``."""
    order = np.random.default_rng(seed).permutation(len(train))[:max_parts]
    used, probs, gt = [], [], []
    with make_progress(console) as progress:
        task = add_task(progress, "score train parts", total=len(order), info="verdict thresholds")
        for i in order:
            if deadline is not None and time.monotonic() > deadline and len(used) >= min_parts:
                break
            img = read_image(train[i].image)
            h, w = img.shape[:2]
            used.append(int(i))
            probs.append(classifier.probs(classifier.crops(img, dets[i].boxes)))
            gt.append(train[i].boxes_xyxy(w, h))
            progress.update(task, advance=1)
            update_rate(progress, task, "img")
    return part_sample(vcfg, [train[i] for i in used], [dets[i] for i in used], probs, gt)


def _calibration_batches(clf: OnnxClassifier, samples: list[Sample], dets: list[Detections]) -> list[np.ndarray]:
    """``clf``'s input tensors for up to CALIBRATION_IMAGES training images spread over the split (crops of the
    ground-truth boxes and the detector's candidates, one batch per image): what the line classifier will see."""
    idx = np.unique(np.linspace(0, len(samples) - 1, min(CALIBRATION_IMAGES, len(samples))).round().astype(int))
    batches = []
    for i in idx:
        img = read_image(samples[i].image)
        h, w = img.shape[:2]
        boxes = samples[i].boxes_xyxy(w, h)
        if i < len(dets) and len(dets[i]):
            boxes = np.concatenate([boxes, dets[i].boxes])
        if len(boxes):
            batches.append(clf.tensors(clf.crops(img, boxes)))
    return batches


def _int8_agreement(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """How far the int8 classifier's defect probabilities (1 - p(background)) are from fp32's on the same crops."""
    ref, got = [p for p in ref if len(p)], [p for p in got if len(p)]
    if not ref:
        return {"crops": 0, "mean_abs_diff": 0.0, "max_abs_diff": 0.0, "share_diff_over_0.1": 0.0,
                "same_class": 1.0, "used": True}
    r, g = np.concatenate(ref), np.concatenate(got)
    diff = np.abs(r[:, 0] - g[:, 0])
    out = {"crops": len(diff), "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
           "share_diff_over_0.1": float((diff > 0.1).mean()), "same_class": float((r.argmax(1) == g.argmax(1)).mean())}
    out["used"] = bool(out["mean_abs_diff"] <= INT8_MEAN_DIFF and out["share_diff_over_0.1"] <= INT8_BIG_DIFF_SHARE)
    return out


def _keep(d: Detections, conf: float, min_keep: int) -> Detections:
    """What the line detector makes at ``conf`` of detections made at its floor (``decode``: best first)."""
    m = d.scores >= conf
    m[:min_keep] = True
    return d.subset(m)


def stage2_crop_sets(ccfg: ClassifierConfig, train: list[Sample], val: list[Sample], train_dets: list[Detections],
                     val_dets: list[Detections], seed: int) -> tuple[CropSet, CropSet]:
    """Stage 2's training and validation crops: ground truth, random clean windows, the detector's false alarms
    (hard negatives) and its matching proposals (``*_dets[i]`` = the line detector's output on image ``i``)."""
    kw = dict(crop_size=ccfg.crop_size, context=ccfg.context, min_crop=ccfg.min_crop, scale=TRAIN_MARGIN,
              background_per_defect=ccfg.background_per_defect, rel_sizes=defect_rel_sizes(train),
              hard_negatives_per_image=ccfg.hard_negatives_per_image if ccfg.hard_negatives else 0,
              proposals_per_defect=ccfg.proposals_per_defect)
    auto_flip = ccfg.augment.invert > 0 and ccfg.augment.invert_classes == "auto"
    train_set = build_crop_set(train, detections={i: (d.boxes, d.scores) for i, d in enumerate(train_dets)},
                               seed=seed, measure_polarity=auto_flip, **kw)
    val_set = build_crop_set(val, detections={i: (d.boxes, d.scores) for i, d in enumerate(val_dets)},
                             seed=seed + 1, **kw)
    return train_set, val_set


def background_warning(counts: list[int]) -> str | None:
    """What to tell the user when stage 2 has few background crops (``counts``: crops per class, background
    first), else None."""
    bg, defects = counts[0], sum(counts[1:])
    if bg >= MIN_BACKGROUND_SHARE * defects:
        return None
    return (f"{bg} background crops for {defects} defect crops: the classifier sees little clean surface to tell "
            "false alarms from defects. Clean windows keep clear of every labelled defect (grown by a quarter of "
            f"its size, at most {BACKGROUND_GAP * 100:g} % of the part), and large defects leave little room; good "
            "parts in train (images without a label file) give it clean surface.")


def train_run(data_yaml: Path, cfg: QCConfig, out: Path, *, detector_weights: str | Path | None = None,
              console: Console | None = None) -> TrainOutcome:
    """Train stage 1 and stage 2 on ``data_yaml`` into run directory ``out`` and return run.json's content."""
    console = console or Console()
    start = time.monotonic()
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    deadline = start + budget_s if budget_s else None
    seed_everything(cfg.seed)
    set_torch_threads(cfg.threads)
    device = pick_device(cfg.device)

    ds = load_dataset(data_yaml, ("train", "val"))
    train, val = ds.split("train"), ds.split("val")
    if not any(s.defective for s in train) or not any(s.defective for s in val):
        raise InputError(f"{data_yaml}: train and val each need at least one labelled defect")
    out = Path(out)
    ckpt = out / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    resolved = write_resolved_yaml(ds, out / "data.yaml")
    fp = fingerprint(ds)
    labels = ["background", *ds.names]
    snapshot = config_snapshot(cfg)
    console.print(f"[bold]data[/] {data_yaml}: {ds.summary()}")
    scale = defect_scale(train, cfg.detector.imgsz)
    if warning := small_defect_warning(scale):
        console.print(f"[yellow]warning: {warning}[/]")

    # ---- stage 1
    from industrial_qc.detector import choose_conf, export_detector, train_detector

    det_minutes = None
    if budget_s:
        reserve = max(MIN_RESERVE_S, 0.08 * budget_s)
        det_minutes = max(0.05, (budget_s - reserve) * cfg.detector_share / 60)
    console.print(f"[bold]stage 1[/] detector {cfg.detector.model} at {cfg.detector.imgsz} px"
                  + (f", {det_minutes:.1f} min budget" if det_minutes else f", {cfg.detector.epochs} epochs"))
    det = train_detector(cfg.detector, resolved, ckpt, device="cpu" if device.type == "cpu" else "0", seed=cfg.seed,
                         minutes=det_minutes, weights=detector_weights, threads=cfg.threads, console=console)
    export_detector(det.best_pt, out / "detector.onnx", cfg.detector, ds.names,
                    {"data_fingerprint": fp, "run_name": out.name})
    console.print(f"  detector: {det.epochs_run} epochs in {det.seconds / 60:.1f} min, val mAP50 "
                  f"{det.metrics['mAP50']:.3f}, recall {det.metrics['recall']:.3f}")

    # ---- line-time confidence, hard negatives and val candidates, from the exported detector (what the line runs)
    detector = OnnxDetector(out / "detector.onnx")
    dcfg, ccfg = cfg.detector, cfg.classifier
    detector.conf = dcfg.min_conf
    with make_progress(console) as progress:
        val_raw = _detect_all(detector, val, progress, "detect val")
        val_gt = _gt_boxes(val)
        conf, box_recall = choose_conf(val_raw, val_gt, target_recall=dcfg.target_box_recall,
                                       iou_thr=cfg.verdict.match_iou, floor=dcfg.min_conf, ceiling=dcfg.conf)
        detector.conf = conf
        write_metadata(out / "detector.onnx", {"conf": conf})
        val_dets = [_keep(d, conf, dcfg.min_candidates) for d in val_raw]
        need_train_dets = (ccfg.hard_negatives or ccfg.proposals_per_defect > 0
                           or cfg.verdict.reference == "train+val")
        train_dets = _detect_all(detector, train, progress, "detect train") if need_train_dets else []
        console.print(f"  line confidence {conf:.4f}: val box recall {box_recall:.3f} with <= {dcfg.max_det} "
                      "candidates")
        train_set, val_set = stage2_crop_sets(ccfg, train, val, train_dets, val_dets, cfg.seed)
    counts = train_set.counts(len(labels))
    console.print(f"[bold]stage 2[/] classifier {ccfg.arch}: {len(train_set)} train crops "
                  f"{dict(zip(labels, counts, strict=True))}, {len(val_set)} val crops")
    if warning := background_warning(counts):
        console.print(f"[yellow]warning: {warning}[/]")

    # ---- stage 2
    from industrial_qc.classifier import export_classifier, train_classifier

    cls_threads = set_torch_threads(cfg.threads)  # Ultralytics' device selection leaves torch on cores - 1

    cls_deadline = None
    if deadline is not None:
        cls_deadline = max(time.monotonic() + 5.0, deadline - max(MIN_RESERVE_S, 0.05 * budget_s))
    clf = train_classifier(ccfg, labels, train_set, val_set, ckpt / "classifier", deadline=cls_deadline,
                           device=device, seed=cfg.seed, config_snapshot=snapshot, console=console)
    export_classifier(clf.model, ccfg, labels, clf.temperature, out / "classifier.onnx",
                      {"data_fingerprint": fp, "run_name": out.name})

    # ---- the line's classifier: an int8 copy when it agrees with fp32 on the val candidates
    classifier = OnnxClassifier(out / "classifier.onnx")
    int8 = None
    (out / LINE_CLASSIFIER_INT8).unlink(missing_ok=True)  # a stale copy from an earlier run in this folder
    if ccfg.line_precision == "int8":
        int8_path = out / LINE_CLASSIFIER_INT8
        try:
            batches = _calibration_batches(classifier, train, train_dets)
            quantize_int8(out / "classifier.onnx", int8_path, batches,
                          {"precision": "int8", "calibration_crops": int(sum(len(b) for b in batches))})
            int8 = OnnxClassifier(int8_path)
        except ExportError as exc:
            console.print(f"[yellow]  {exc}; the line uses the fp32 classifier[/]")
    # ---- thresholds on val, with the line's ONNX models and the detections already made
    val_probs, int8_probs = [], []
    for s, d in zip(val, val_dets, strict=True):
        crops = classifier.crops(read_image(s.image), d.boxes)
        val_probs.append(classifier.probs(crops))
        if int8 is not None:
            int8_probs.append(int8.probs(crops))
    int8_check = None
    if int8 is not None:
        int8_check = _int8_agreement(val_probs, int8_probs)
        if int8_check["used"]:
            write_metadata(int8.model.path, {"val_agreement": int8_check})
            classifier, val_probs = int8, int8_probs
            console.print(f"  line classifier: int8 ({LINE_CLASSIFIER_INT8}); defect probability vs fp32 on "
                          f"{int8_check['crops']} val candidates: mean |diff| {int8_check['mean_abs_diff']:.4f}, "
                          f"same class {int8_check['same_class']:.3f}")
        else:
            console.print(f"[yellow]  line classifier: fp32; the int8 copy moved defect probabilities by "
                          f"{int8_check['mean_abs_diff']:.3f} on average ({int8_check['share_diff_over_0.1']:.1%} "
                          "by more than 0.1)[/]")
            int8.model.path.unlink()
    line_classifier = classifier.model.path.name
    vcfg = cfg.verdict
    val_sample = part_sample(vcfg, val, val_dets, val_probs, val_gt)
    train_sample = None
    if vcfg.reference == "train+val":
        train_sample = train_reference(vcfg, classifier, train, train_dets, cfg.seed,
                                       None if deadline is None else deadline - MIN_RESERVE_S / 2, console=console)
    th = val_thresholds(vcfg, val_sample, train_sample)
    for note in (th.reference_note, th.review_note):
        if note:
            console.print(f"[yellow]  thresholds: {note}[/]")
    thresholds = th.to_dict()
    for path in {out / "classifier.onnx", classifier.model.path}:
        write_metadata(path, {"thresholds": thresholds})
    pipe = Pipeline(detector, classifier, th.fail, th.review, score=th.score)
    val_results = []
    for s, d, p in zip(val, val_dets, val_probs, strict=True):
        w, h = image_size(s.image)
        val_results.append({**pipe.result(d, p), "status": "ok", "height": h, "width": w})
    val_pipeline = pipeline_metrics(val_results, val, ds.names, vcfg.match_iou)

    metrics = {
        "detector": {**det.metrics, "epochs": det.epochs_run, "minutes": det.seconds / 60, "line_conf": conf,
                     "val_box_recall_at_line_conf": box_recall},
        "classifier": {k: v for k, v in clf.val_metrics.items()}
        | {"epochs": len(clf.history), "stopped": clf.stopped_reason, "minutes": clf.seconds / 60,
           "train_crops": len(train_set), "val_crops": len(val_set), "line_classifier": line_classifier,
           "torch_threads": cls_threads, "polarity_flips": clf.polarity_flips,
           "int8_check": int8_check},
        "thresholds": thresholds,
        "val_pipeline": val_pipeline,
        "defect_scale": scale,
        "minutes_total": (time.monotonic() - start) / 60,
    }
    plot_dir = out / "plots"
    _plots(plot_dir, clf.val_metrics["confusion_matrix"], labels, val_sample.scores, val_sample.defective, th)
    (out / "metrics.json").write_text(json.dumps({"train": metrics}, indent=2, default=float))
    headline = {
        "val_detector_mAP50": det.metrics["mAP50"],
        "val_classifier_accuracy": clf.val_metrics["accuracy"],
        "val_escape_rate": val_pipeline["parts"]["escape_rate"],
        "val_false_reject_rate": val_pipeline["parts"]["false_reject_rate"],
        "minutes_total": metrics["minutes_total"],
    }
    run = write_run_json(out, vertical="industrial_qc", labels=labels, config=snapshot, data_fingerprint=fp,
                         metrics=headline, thresholds=thresholds, detector_names=ds.names,
                         data_yaml=str(Path(data_yaml).resolve()),
                         artifacts={"detector": "detector.onnx", "classifier": "classifier.onnx",
                                    "line_classifier": line_classifier,
                                    "checkpoints": "checkpoints", "metrics": "metrics.json", "plots": "plots"})
    return TrainOutcome(out, run, metrics)


def _plots(plot_dir: Path, confusion: list[list[int]], labels: list[str], scores: np.ndarray, defective: np.ndarray,
           th) -> None:
    """Confusion matrix of stage 2 on val crops; part-level precision-recall curve with the chosen thresholds."""
    from sklearn.metrics import precision_recall_curve

    from common.plots import pyplot, save_confusion_matrix

    plt = pyplot()

    save_confusion_matrix(plot_dir / "confusion_matrix.png", confusion, labels, "classifier, val crops")

    fig, ax = plt.subplots(figsize=(5, 4))
    if defective.any() and (~defective).any():
        p, r, _ = precision_recall_curve(defective, scores)
        ax.plot(r, p, label="part: defective vs good")
    for t, name in ((th.review, "review"), (th.fail, "fail")):
        pred = scores >= t
        rec = (pred & defective).sum() / max(defective.sum(), 1)
        prec = (pred & defective).sum() / max(pred.sum(), 1)
        ax.scatter([rec], [prec], label=f"{name} >= {t:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("part-level PR curve (val)")
    fig.tight_layout()
    fig.savefig(plot_dir / "pr_curve.png", dpi=100)
    plt.close(fig)
