"""Accuracy benchmark of medical3d: test AUROC on synthetic MRI studies with the default config.

120 ``vsuite med synth`` MRI studies (half with a 3-6 mm lesion, mixed NIfTI/NRRD/MHA/DICOM, varied spacing and
orientation), split 72/18/30 stratified, trained with configs/medical3d/default.yaml for at most 20 minutes of
CPU time, evaluated on the 30 held-out studies. Target: AUROC >= 0.95. Prints a table and writes JSON.

    python benchmarks/med_accuracy.py                 # the real benchmark (~30 min on 2 cores)
    python benchmarks/med_accuracy.py --smoke         # 16 small studies, 1 minute: checks the plumbing only
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_split_manifest(data: Path, n_train: int, n_val: int, seed: int) -> Path:
    """Add a stratified split column (n_train/n_val per dataset, rest test) to synth's manifest."""
    import numpy as np

    with open(data / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    labels = sorted(by_label)
    for label in labels:
        group = by_label[label]
        order = rng.permutation(len(group))
        k_train = round(n_train * len(group) / len(rows))
        k_val = round(n_val * len(group) / len(rows))
        for rank, j in enumerate(order):
            group[j]["split"] = "train" if rank < k_train else "val" if rank < k_train + k_val else "test"
    out = data / "manifest_split.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=120)
    ap.add_argument("--split", default="72/18/30", help="train/val/test counts")
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-time cap")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--smoke", action="store_true", help="16 studies of 48^3, 1 minute: plumbing check only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "med_accuracy.json")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from medical3d.config import load_medical_config
    from medical3d.evaluate import evaluate_run
    from medical3d.synth import synth_dataset
    from medical3d.train import train

    console = Console()
    size, overrides = None, list(args.overrides)
    if args.smoke:
        args.cases, args.split, args.minutes, size = 16, "8/4/4", 1.0, 48
        overrides += ["preprocess.resample.spacing=[4.0,4.0,4.0]", "preprocess.crop.size=[48,48,48]",
                      "train.epochs=3"]
    n_train, n_val, n_test = (int(v) for v in args.split.split("/"))
    if n_train + n_val + n_test != args.cases:
        raise SystemExit(f"--split {args.split} does not add up to --cases {args.cases}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="med_accuracy_"))
    data = workdir / "data"
    t0 = time.perf_counter()
    if not (data / "manifest.csv").is_file():
        synth_dataset(data, args.cases, "mri", seed=args.seed, size=size)
    t_synth = time.perf_counter() - t0
    manifest = write_split_manifest(data, n_train, n_val, args.seed)
    cfg = load_medical_config(args.config, [*overrides, f"data.cache_dir={workdir / 'cache'}"])
    t1 = time.perf_counter()
    result = train(manifest, cfg, workdir / "run", max_minutes=args.minutes, console=console)
    t_train = time.perf_counter() - t1
    test = evaluate_run(workdir / "run", manifest, "test", console=console)
    out = {
        "cases": args.cases, "split": args.split, "max_minutes": args.minutes, "smoke": args.smoke,
        "network": cfg.model.network, "test_auroc": test["auroc"], "test_accuracy": test["accuracy"],
        "test_sensitivity": test.get("sensitivity"), "test_specificity": test.get("specificity"),
        "test_ece": test["ece"], "val_auroc": result.metrics["val"]["auroc"],
        "epochs_run": len(result.metrics["fit"]["history"]), "stopped_reason": result.stopped_reason,
        "synth_seconds": round(t_synth, 1), "train_command_seconds": round(t_train, 1),
        "target_auroc>=0.95": (test["auroc"] or 0) >= 0.95, "workdir": str(workdir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2), encoding="utf-8")
    table = Table(title=f"medical3d accuracy ({args.cases} MRI studies, {args.split})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("test_auroc", "test_accuracy", "test_sensitivity", "test_specificity", "test_ece", "val_auroc",
              "epochs_run", "stopped_reason", "train_command_seconds"):
        v = out[k]
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(f"-> {args.out}")


if __name__ == "__main__":
    main()
