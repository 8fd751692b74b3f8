"""Accuracy benchmark, industrial_qc against plain Ultralytics on the same synthetic data and time budget.

Full run (issue 3): 400 train / 100 val / 200 test images at 320 px, at most 30 CPU minutes of training each:

    python benchmarks/qc_accuracy.py --minutes 30 --out bench_qc_accuracy.json

Smoke run (a minute or two, numbers meaningless): ``python benchmarks/qc_accuracy.py --quick``.

Suite: ``vsuite qc train`` with the default config and ``--max-minutes``; ``vsuite qc eval`` on test.
Peer: ``YOLO(<same yaml>).train(data, imgsz, time=budget)`` with Ultralytics' defaults, except what keeps it
offline (``amp=False``: the AMP check downloads weights; ``plots=False``: plotting downloads a font). Its
part-level verdict: a part fails when ``predict`` (default conf 0.25) returns any box.
On a CPU with native bf16 (AMX / AVX512-BF16) the suite trains both stages in bf16 autocast (config
``detector.cpu_bf16``, ``classifier.train.cpu_bf16``), about 1.75x the detector epochs per minute; the peer keeps
Ultralytics' CPU default, fp32. ``detector_mAP50_agnostic`` is Ultralytics' validation with every class merged
(``single_cls``): how well each detector finds defects, whatever it calls them.
``classifier_accuracy_gt_crops_heldout``: the suite's line classifier on every defect of ``--heldout-images``
more synthetic parts (seed + 1000), a firmer figure than the test split's ~230 defects. ``*_heldout`` part rates:
both sides' verdicts on those parts (a 1 % escape rate is 1.5 of the test split's 150 defective parts).
Prints a side-by-side table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = {"detector_mAP50": 0.95, "classifier_accuracy_gt_crops": 0.98, "escape_rate": 0.01}


def heldout_parts(heldout_yaml: Path) -> list:
    """Every part of the held-out set (all its splits: none was trained on)."""
    from industrial_qc.data import load_dataset

    ds = load_dataset(heldout_yaml, ("train", "val", "test"), required=())
    return [s for split in ("train", "val", "test") for s in ds.split(split)]


def _heldout_rates(verdicts: list[str], parts: list) -> dict:
    from industrial_qc.verdict import part_rates

    r = part_rates(verdicts, [s.defective for s in parts])
    return {f"{k}_heldout": r[k] for k in ("escape_rate", "false_reject_rate", "review_rate_good",
                                            "review_rate_defective")} | {"heldout_parts": len(parts)}


def suite_heldout_rates(pipe, heldout_yaml: Path) -> dict:
    """The suite's line verdicts (``pipe``: an ``industrial_qc.pipeline.Pipeline``) on every held-out part: part
    rates with 5x the test split's parts."""
    from rich.console import Console
    from rich.progress import track

    from industrial_qc.data import read_image

    parts = heldout_parts(heldout_yaml)
    return _heldout_rates([pipe.inspect(read_image(s.image))["verdict"]
                           for s in track(parts, description="suite: held-out parts", console=Console(stderr=True))],
                          parts)


def peer_heldout_rates(weights: Path, heldout_yaml: Path, imgsz: int) -> dict:
    """The peer's verdicts (any box at ``predict``'s default conf = FAIL) on every held-out part."""
    from rich.console import Console
    from rich.progress import track

    from common.runtime import import_ultralytics

    import_ultralytics()
    from ultralytics import YOLO

    model, parts = YOLO(str(weights)), heldout_parts(heldout_yaml)
    verdicts = ["FAIL" if len(model.predict(str(s.image), imgsz=imgsz, device="cpu", verbose=False)[0].boxes)
                else "PASS" for s in track(parts, description="peer: held-out parts", console=Console(stderr=True))]
    return _heldout_rates(verdicts, parts)


def run_peer(data_yaml: Path, model_yaml: str, imgsz: int, minutes: float, work: Path, seed: int,
             heldout_yaml: Path | None = None) -> dict:
    """Plain Ultralytics, default settings, same data and time budget; mAP on test and part-level rates."""
    from common.runtime import import_ultralytics
    from industrial_qc.data import load_dataset, write_resolved_yaml
    from industrial_qc.verdict import part_rates

    import_ultralytics()
    from ultralytics import YOLO

    ds = load_dataset(data_yaml)
    resolved = write_resolved_yaml(ds, work / "data.yaml")
    t0 = time.monotonic()
    model = YOLO(model_yaml)
    model.train(data=str(resolved), imgsz=imgsz, time=minutes / 60, device="cpu", amp=False, plots=False,
                project=str(work.resolve()), name="train", exist_ok=True, seed=seed, verbose=False)
    train_min = (time.monotonic() - t0) / 60
    best = YOLO(str(model.trainer.best))
    res, merged = (best.val(data=str(resolved), split="test", imgsz=imgsz, device="cpu", plots=False,
                            project=str(work.resolve()), name="val_test", exist_ok=True, verbose=False,
                            single_cls=single_cls) for single_cls in (False, True))
    test = ds.split("test")
    verdicts = []
    for s in test:
        pred = best.predict(str(s.image), imgsz=imgsz, device="cpu", verbose=False)[0]
        verdicts.append("FAIL" if len(pred.boxes) else "PASS")
    rates = part_rates(verdicts, [s.defective for s in test])
    out = {"detector_mAP50": float(res.box.map50), "detector_mAP50_95": float(res.box.map),
           "detector_mAP50_agnostic": float(merged.box.map50),
           "escape_rate": rates["escape_rate"], "false_reject_rate": rates["false_reject_rate"],
           "review_rate_good": 0.0, "train_minutes": train_min, "epochs": int(model.trainer.epoch) + 1}
    if heldout_yaml is not None:
        out.update(peer_heldout_rates(Path(model.trainer.best), heldout_yaml, imgsz))
    return out


def run_suite(data_yaml: Path, minutes: float, imgsz: int, work: Path, overrides: list[str],
              heldout_yaml: Path | None = None) -> dict:
    from rich.console import Console

    from industrial_qc.config import load_qc_config
    from industrial_qc.evaluate import classifier_gt_metrics_all_splits, evaluate_run, summary
    from industrial_qc.pipeline import Pipeline
    from industrial_qc.train import train_run

    cfg = load_qc_config(None, [f"max_minutes={minutes}", f"detector.imgsz={imgsz}", *overrides])
    t0 = time.monotonic()
    outcome = train_run(data_yaml, cfg, work / "run", console=Console(stderr=True))
    train_min = (time.monotonic() - t0) / 60
    m = evaluate_run(work / "run", data_yaml, "test")
    head = summary(m)
    head.update(train_minutes=train_min, thresholds=outcome.metrics["thresholds"],
                detector_epochs=outcome.metrics["detector"]["epochs"],
                classifier_epochs=outcome.metrics["classifier"]["epochs"])
    if heldout_yaml is not None:  # the line classifier on every defect of a larger held-out set: a firmer figure
        pipe = Pipeline.from_run(work / "run")
        gt = classifier_gt_metrics_all_splits(pipe.classifier, heldout_yaml, pipe.classifier.labels[1:])
        head.update(classifier_accuracy_gt_crops_heldout=gt["accuracy_gt_crops"], heldout_gt_crops=gt["n_gt_crops"])
        head.update(suite_heldout_rates(pipe, heldout_yaml))
    return head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget for each side (CPU minutes)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: 60 images at 128 px, 0.75 min each")
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/qc_accuracy"))
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: WORKDIR/report.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=700, help="total images (400/100/200 split at 700)")
    ap.add_argument("--size", type=int, default=320, help="image side in pixels")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--heldout-images", type=int, default=1000,
                    help="also score the classifier on the ground-truth crops of this many more synthetic parts "
                         "(another seed; every split): the test split's ~230 defects leave a ~2.3 pt error bar. 0: off")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="suite config override")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from industrial_qc.synth import SynthConfig, synthesize_shown

    if args.quick:
        n, size, minutes = 60, 128, min(args.minutes, 0.75)
    else:
        n, size, minutes = args.images, args.size, args.minutes
    console = Console()
    work = args.workdir
    data_cfg = SynthConfig(images=n, size=size, seed=args.seed, val_frac=1 / 7, test_frac=2 / 7)
    rep = synthesize_shown(work / "data", data_cfg, console)
    console.print(f"data: {rep.counts} at {size} px; budget {minutes:g} min per side")
    heldout = None
    if args.heldout_images > 0:
        n_held = min(args.heldout_images, 60) if args.quick else args.heldout_images
        heldout = synthesize_shown(work / "heldout", SynthConfig(images=n_held, size=size, seed=args.seed + 1000),
                                   console, "synth held-out parts").data_yaml
    suite = run_suite(rep.data_yaml, minutes, size, work / "suite", args.overrides, heldout)
    peer = None if args.skip_peer else run_peer(rep.data_yaml, "yolov5nu.yaml", size, minutes, work / "peer",
                                                args.seed, heldout)

    table = Table(title=f"industrial_qc accuracy ({rep.counts['test']} test parts, {size} px, {minutes:g} min)")
    for col in ("metric", "target", "suite", "plain ultralytics"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    rows = ["detector_mAP50", "detector_mAP50_95", "detector_mAP50_agnostic", "classifier_accuracy_gt_crops",
            "classifier_accuracy_gt_crops_heldout", "heldout_gt_crops", "escape_rate", "false_reject_rate",
            "review_rate_good", "heldout_parts", "escape_rate_heldout", "false_reject_rate_heldout",
            "review_rate_good_heldout", "review_rate_defective_heldout", "train_minutes"]

    def f(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    for k in rows:
        table.add_row(k, f(TARGETS.get(k)), f(suite.get(k)), f(peer.get(k)) if peer else "-")
    console.print(table)
    report = {"data": {"counts": rep.counts, "size": size, "seed": args.seed,
                       "axis_scratches": data_cfg.axis_scratches}, "minutes": minutes, "quick": args.quick,
              "targets": TARGETS, "suite": suite, "peer": peer}
    out = args.out or work / "report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"-> {out}")


if __name__ == "__main__":
    main()
