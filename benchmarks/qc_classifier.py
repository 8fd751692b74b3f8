"""Stage-2 benchmark: the classifier alone, trained on a fixed run's detector, over several seeds, scored on a
large held-out set of ground-truth crops and, at part level, by how well it separates the held-out defective
parts from the good ones behind that detector (AUROC; good parts flagged at 95 / 98 % defective-part recall).

Why: ``qc_accuracy.py`` scores the classifier on the ~230 defects of its 200 test images (1 crop = 0.43 pt) after
one training run, and the seed-to-seed spread of a training run is ~2.5 pt, so a classifier change measured
there once is mostly noise. Here every variant trains for the same fixed number of epochs (no time budget, no
early stop) on the same crops, once per seed, and is scored on the ground-truth crops of a larger held-out set.

    python benchmarks/qc_classifier.py RUN DATA_YAML --epochs 25 --seeds 0 1 \\
        --variant crop96=classifier.crop_size=96 --variant hn6=classifier.hard_negatives_per_image=6

RUN is a ``vsuite qc train`` run directory (its ``detector.onnx`` makes the hard negatives and proposals, as in
training); DATA_YAML is the data it was trained on (train + val splits are used). The held-out set is
``--eval-data`` or, by default, ``--eval-images`` parts from ``vsuite qc synth`` with ``--eval-seed`` at the data's
image size (generated once into the work folder). The baseline (no overrides) runs unless ``--skip-baseline``.
Prints a table (one row per variant and seed, then the mean per variant) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _held_out(args: argparse.Namespace, image_size: int, console) -> Path:
    if args.eval_data:
        return args.eval_data
    from industrial_qc.synth import SynthConfig, synthesize_shown

    out = args.workdir / f"heldout_{args.eval_images}_{image_size}px_seed{args.eval_seed}"
    if not (out / "data.yaml").is_file():
        synthesize_shown(out, SynthConfig(images=args.eval_images, size=image_size, seed=args.eval_seed), console,
                         "synth held-out parts")
    return out / "data.yaml"


def _held_out_candidates(held_yaml: Path, detector, console) -> dict:
    """The fixed detector's candidates on every held-out part, found once for all variants: ``images``,
    ``boxes`` (K, 4) per part and ``defective`` (N,). Each classifier cuts its own crops (a variant may change
    the crop geometry)."""
    import numpy as np

    from common.progress import add_task, make_progress, update_rate
    from industrial_qc.data import load_dataset, read_image

    ds = load_dataset(held_yaml, ("train", "val", "test"), required=())
    samples = [s for split in ("train", "val", "test") for s in ds.split(split)]
    images, boxes = [], []
    with make_progress(console) as progress:
        task = add_task(progress, "detect held-out parts", total=len(samples))
        for s in samples:
            img = read_image(s.image)
            images.append(img)
            boxes.append(detector(img).boxes)
            progress.update(task, advance=1)
            update_rate(progress, task, "img")
    return {"images": images, "boxes": boxes, "defective": np.array([s.defective for s in samples])}


def _part_separation(clf, held: dict) -> dict:
    """How well the part score (highest defect probability over a part's candidates, 0 with none) separates the
    held-out defective parts from the good ones, independent of where a threshold lands: AUROC, and the share
    of good parts flagged (not PASS) at the threshold that flags 95 % / 98 % of the defective parts (set on
    the held-out parts themselves). GT-crop accuracy cannot see this: a good part is flagged by a texture
    candidate that no ground-truth crop resembles."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y = held["defective"]
    scores = np.zeros(len(y))
    for i, (img, b) in enumerate(zip(held["images"], held["boxes"], strict=True)):
        if len(b):
            scores[i] = float((1 - clf.probs(clf.crops(img, b))[:, 0]).max())
    out = {"auroc": float(roc_auc_score(y, scores)), "parts": len(y), "defective_parts": int(y.sum())}
    for recall in (0.95, 0.98):
        t = float(np.quantile(scores[y], 1 - recall, method="lower"))
        out[f"good_flagged_at_recall_{recall}"] = float((scores[~y] >= t).mean())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="run directory with detector.onnx")
    ap.add_argument("data", type=Path, help="data.yaml the run was trained on")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                    help="a named set of config overrides (repeatable)")
    ap.add_argument("--skip-baseline", action="store_true", help="only the --variant runs")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--eval-data", type=Path, default=None, help="held-out data.yaml (all its splits are scored)")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--eval-seed", type=int, default=101)
    ap.add_argument("--workdir", type=Path, default=Path("bench_qc_classifier"))
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: WORKDIR/qc_classifier.json)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from common.progress import add_task, make_progress, update_rate
    from common.runtime import seed_everything, set_torch_threads
    from industrial_qc.classifier import export_classifier, train_classifier
    from industrial_qc.config import DEFAULT_CONFIG, load_qc_config
    from industrial_qc.data import load_dataset, read_image
    from industrial_qc.evaluate import classifier_gt_metrics_all_splits
    from industrial_qc.pipeline import OnnxClassifier, OnnxDetector
    from industrial_qc.train import stage2_crop_sets

    console = Console()
    if not console.is_terminal:  # a log file: the whole table, not 80 columns of it
        console = Console(width=140)
    variants: dict[str, list[str]] = {} if args.skip_baseline else {"baseline": []}
    for v in args.variant:
        name, _, sets = v.partition("=")
        if not name or not sets:
            ap.error(f"--variant {v!r}: expected NAME=KEY=VALUE[,KEY=VALUE]")
        # a comma starts the next KEY=VALUE only before "key=": list values such as scale=[0.6,1.6] stay whole
        variants[name] = re.split(r",(?=[A-Za-z_][\w.]*=)", sets)
    if not variants:
        ap.error("nothing to run: --skip-baseline without --variant")
    args.workdir.mkdir(parents=True, exist_ok=True)
    # every run reads a copy taken now: editing the default config during a long run changes nothing here
    base_config = args.workdir / "base_config.yaml"
    shutil.copyfile(DEFAULT_CONFIG, base_config)
    for name, sets in variants.items():  # a bad key fails now, not after the first variant's training
        try:
            load_qc_config(base_config, sets)
        except Exception as exc:
            ap.error(f"--variant {name}: {exc}")

    ds = load_dataset(args.data, ("train", "val"))
    train, val = ds.split("train"), ds.split("val")
    image_size = max(read_image(train[0].image).shape[:2])
    detector = OnnxDetector(args.run / "detector.onnx")  # at the run's line confidence, as in training
    with make_progress(console) as progress:
        task = add_task(progress, "detect train + val", total=len(train) + len(val))

        def detect(s):
            progress.update(task, advance=1)
            update_rate(progress, task, "img")
            return detector(read_image(s.image))

        train_dets, val_dets = [detect(s) for s in train], [detect(s) for s in val]
    held_yaml = _held_out(args, image_size, console)
    labels = ["background", *ds.names]
    held_parts = _held_out_candidates(held_yaml, detector, console)

    rows = []
    for name, sets in variants.items():
        for seed in args.seeds:
            fixed = [f"seed={seed}", f"classifier.train.epochs={args.epochs}", f"classifier.train.t0={args.epochs}",
                     f"classifier.train.patience={args.epochs + 1}"]
            cfg = load_qc_config(base_config, [*sets, *fixed])
            seed_everything(seed)
            threads = set_torch_threads(cfg.threads)
            tr, va = stage2_crop_sets(cfg.classifier, train, val, train_dets, val_dets, seed)
            out = args.workdir / name / f"seed{seed}"
            t0 = time.monotonic()
            console.print(f"[bold]{name}[/] seed {seed}: {len(tr)} train crops")
            res = train_classifier(cfg.classifier, labels, tr, va, out / "checkpoints", deadline=None,
                                   device=torch.device("cpu"), seed=seed, console=console)
            minutes = (time.monotonic() - t0) / 60
            export_classifier(res.model, cfg.classifier, labels, res.temperature, out / "classifier.onnx", {})
            clf = OnnxClassifier(out / "classifier.onnx")
            gt = classifier_gt_metrics_all_splits(clf, held_yaml, ds.names)
            parts = _part_separation(clf, held_parts)
            cm = np.array(gt["with_background"]["confusion_matrix"])
            per_class = {labels[c]: float(cm[c, c] / max(cm[c].sum(), 1)) for c in range(1, len(labels))}
            row = {"variant": name, "overrides": sets, "seed": seed, "epochs": len(res.history), "threads": threads,
                   "train_crops": len(tr), "minutes": minutes,
                   "val_balanced_accuracy": res.val_metrics["balanced_accuracy"],
                   "heldout_gt_accuracy": gt["accuracy_gt_crops"], "heldout_gt_crops": gt["n_gt_crops"],
                   "heldout_per_class": per_class, "heldout_confusion": cm.tolist(), "heldout_parts": parts}
            rows.append(row)
            console.print(f"{name} seed {seed}: held-out GT-crop accuracy {row['heldout_gt_accuracy']:.4f}, "
                          f"part AUROC {parts['auroc']:.4f}, good parts flagged at 98 % defective-part recall "
                          f"{parts['good_flagged_at_recall_0.98']:.3f} ({minutes:.1f} min)")

    table = Table(title=f"stage 2 alone, {args.epochs} epochs, held-out GT crops ({rows[0]['heldout_gt_crops']})")
    part_cols = ("part AUROC", "good flagged @95", "good flagged @98")
    part_keys = ("auroc", "good_flagged_at_recall_0.95", "good_flagged_at_recall_0.98")
    for col in ("variant", "seed", "minutes", "val balanced", "held-out GT acc", *labels[1:], *part_cols):
        table.add_column(col, justify="left" if col == "variant" else "right")
    summary = {}
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        for r in mine:
            table.add_row(name, str(r["seed"]), f"{r['minutes']:.1f}", f"{r['val_balanced_accuracy']:.3f}",
                          f"{r['heldout_gt_accuracy']:.3f}", *(f"{r['heldout_per_class'][c]:.3f}" for c in labels[1:]),
                          *(f"{r['heldout_parts'][k]:.3f}" for k in part_keys))
        mean = {k: float(np.mean([r[k] for r in mine])) for k in ("minutes", "val_balanced_accuracy",
                                                                  "heldout_gt_accuracy")}
        mean["heldout_gt_accuracy_sd"] = float(np.std([r["heldout_gt_accuracy"] for r in mine]))
        mean["heldout_per_class"] = {c: float(np.mean([r["heldout_per_class"][c] for r in mine])) for c in labels[1:]}
        mean["heldout_parts"] = {k: float(np.mean([r["heldout_parts"][k] for r in mine])) for k in part_keys}
        summary[name] = mean
        table.add_row(f"[bold]{name} mean[/]", "-", f"{mean['minutes']:.1f}", f"{mean['val_balanced_accuracy']:.3f}",
                      f"{mean['heldout_gt_accuracy']:.3f} ± {mean['heldout_gt_accuracy_sd']:.3f}",
                      *(f"{mean['heldout_per_class'][c]:.3f}" for c in labels[1:]),
                      *(f"{mean['heldout_parts'][k]:.3f}" for k in part_keys), end_section=True)
    console.print(table)
    out_json = args.out or args.workdir / "qc_classifier.json"
    out_json.write_text(json.dumps({"run": str(args.run), "data": str(args.data), "epochs": args.epochs,
                                    "seeds": args.seeds, "rows": rows, "summary": summary}, indent=2))
    console.print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
