"""Cross-family accuracy of medical3d: train on some synthetic phantom families, test on one it has not seen.

Each family (``vsuite med synth --family NAME``) is synthesized twice with disjoint seeds: a training pool
(``--cases-per-family`` studies, split 80/20 train/val, stratified) and a test pool (``--test-cases``). A run trains
the default config on the training pools of ``--train-families`` for at most ``--minutes`` wall minutes and
evaluates on the test pool of ``--test-family``. Without ``--test-family`` every family of ``--modality`` is held
out once (trained on all the others). Targets (issue 31) on each held-out family: test AUROC >= 0.95, at the run's
threshold sensitivity >= 0.90 and specificity >= 0.70, ECE <= 0.10; the share of errors sent to REVIEW is reported.

    python benchmarks/med_accuracy.py                                  # every MRI family held out once
    python benchmarks/med_accuracy.py --train-families classic,thick_slice --test-family brain_mixed
    python benchmarks/med_accuracy.py --train-families classic --test-family classic   # within one family
    python benchmarks/med_accuracy.py --smoke                          # tiny, 1 minute per run: plumbing only

The synthesized studies and the preprocessing cache stay in ``--workdir`` between runs (default
/tmp/med_accuracy), so a sweep preprocesses each family once. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"auroc": 0.95, "sensitivity": 0.90, "specificity": 0.70, "ece": 0.10}
TEST_SEED_OFFSET = 1000  # a family's test pool never shares a seed (hence a study) with its training pool


def family_modality(name: str) -> str:
    from medical3d.families import get_family

    return get_family(name).modality


def pool(workdir: Path, family: str, role: str, cases: int, seed: int, size: int | None, console) -> Path:
    """The manifest of one family's training or test pool, synthesized (with progress) on first use."""
    from medical3d.workflows import synth_studies

    name = f"{family}_{role}_{cases}_s{seed}" + ("" if size is None else f"_{size}px")
    out = workdir / "families" / name
    manifest = out / "manifest.csv"
    if not manifest.is_file():
        synth_studies(out, cases, None, seed + (TEST_SEED_OFFSET if role == "test" else 0), size=size,
                      lesion_radius_mm=None, console=console, family=family)
    return manifest


def read_rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return [{"path": str((manifest.parent / r["path"]).resolve()), "label": r["label"]} for r in csv.DictReader(f)]


def stratified_val(rows: list[dict], val_share: float, seed: int) -> list[dict]:
    """Mark a seeded, label-stratified ``val_share`` of ``rows`` as val and the rest as train."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({r["label"] for r in rows}):
        group = [r for r in rows if r["label"] == label]
        n_val = max(1, round(val_share * len(group)))
        order = rng.permutation(len(group))
        out += [{**group[j], "split": "val" if rank < n_val else "train"} for rank, j in enumerate(order)]
    return out


def write_manifest(path: Path, train_families: list[str], test_family: str, args, console) -> Path:
    rows = []
    for i, fam in enumerate(train_families):
        fam_rows = read_rows(pool(args.workdir, fam, "train", args.cases_per_family, args.seed, args.size,
                                  console))
        rows += stratified_val(fam_rows, 0.2, args.seed + i)
    test_pool = pool(args.workdir, test_family, "test", args.test_cases, args.seed, args.size, console)
    rows += [{**r, "split": "test"} for r in read_rows(test_pool)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def errors_in_review(predictions: Path) -> dict:
    """From eval's predictions.csv: studies the threshold calls wrongly, and how many of them went to REVIEW."""
    with open(predictions, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("verdict")]
    wrong = [r for r in rows if r["label"] != r["true_label"]]
    review = [r for r in rows if r["verdict"] == "REVIEW"]
    caught = [r for r in wrong if r["verdict"] == "REVIEW"]
    return {"errors": len(wrong), "errors_in_review": len(caught),
            "errors_in_review_share": len(caught) / len(wrong) if wrong else None,
            "review_share": len(review) / len(rows) if rows else None}


def run_one(train_families: list[str], test_family: str, args, console) -> dict:
    """Train on ``train_families``' pools, evaluate on ``test_family``'s test pool; one result row."""
    from medical3d.config import load_medical_config
    from medical3d.evaluate import evaluate_run
    from medical3d.train import train

    tag = f"{'+'.join(train_families)}__{test_family}"
    work = args.workdir / "runs" / tag
    manifest = write_manifest(work / "manifest.csv", train_families, test_family, args, console)
    modality = family_modality(test_family)
    overrides = [f"preprocess.modality={modality}", *args.smoke_overrides, *args.overrides,
                 f"data.cache_dir={args.workdir / 'cache'}", f"runtime.seed={args.seed}"]
    cfg = load_medical_config(args.config, overrides)
    console.rule(f"train {', '.join(train_families)} -> test {test_family}")
    t0 = time.perf_counter()
    result = train(manifest, cfg, work / "run", max_minutes=args.minutes, console=console)
    t_train = time.perf_counter() - t0
    test = evaluate_run(work / "run", manifest, "test", console=console, gradcam_limit=0)
    review = errors_in_review(Path(test["out_dir"]) / "predictions.csv")
    val = result.metrics["val"]
    row = {"train_families": train_families, "test_family": test_family, "modality": modality,
           "test_auroc": test["auroc"], "test_sensitivity": test.get("sensitivity"),
           "test_specificity": test.get("specificity"), "test_ece": test["ece"], "test_n": test["n"],
           **{f"test_{k}": v for k, v in review.items()}, "threshold": result.decision.threshold,
           "review_low": result.decision.band[0], "review_high": result.decision.band[1],
           "val_auroc": val["auroc"], "val_n": val["n"], "operating_point": result.metrics.get("operating_point"),
           "epochs_run": result.metrics["fit"]["epochs_run"], "stopped_reason": result.stopped_reason,
           "train_command_seconds": round(t_train, 1), "network": cfg.model.network}
    row["targets_met"] = {k: meets(k, row[f"test_{k}"]) for k in TARGETS}
    return row


def meets(metric: str, value: float | None) -> bool:
    if value is None:
        return False
    return value <= TARGETS[metric] if metric == "ece" else value >= TARGETS[metric]


def plan(args) -> list[tuple[list[str], str]]:
    """(train families, test family) per run: the one asked for, or every family of the modality held out once."""
    from medical3d.families import family_names

    if args.test_family:
        train = args.train_families or [f for f in family_names() if f != args.test_family
                                        and family_modality(f) == family_modality(args.test_family)]
        return [(train, args.test_family)]
    families = args.train_families or [f for f in family_names() if family_modality(f) == args.modality]
    if len(families) < 2:
        raise SystemExit(f"need at least two {args.modality} families to hold one out, have {families}")
    return [([f for f in families if f != held], held) for held in families]


def print_table(rows: list[dict], console, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    cols = ("held out", "AUROC", "sens", "spec", "ECE", "REVIEW", "errors in REVIEW", "thr", "val AUROC", "epochs")
    for c in cols:
        table.add_column(c, justify="left" if c == "held out" else "right")

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    for r in rows:
        mark = lambda k, v, ok=r["targets_met"]: f(v) if ok[k] else f"[red]{f(v)}[/]"  # noqa: E731
        caught = f"{r['test_errors_in_review']}/{r['test_errors']}"
        table.add_row(r["test_family"], mark("auroc", r["test_auroc"]), mark("sensitivity", r["test_sensitivity"]),
                      mark("specificity", r["test_specificity"]), mark("ece", r["test_ece"]),
                      f(r["test_review_share"]), caught, f(r["threshold"]), f(r["val_auroc"]), str(r["epochs_run"]))
    console.print(table)
    console.print("targets: " + ", ".join(f"{k} {'<=' if k == 'ece' else '>='} {v}" for k, v in TARGETS.items())
                  + " (red: missed)")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-families", type=str, default=None, help="comma-separated families to train on")
    ap.add_argument("--test-family", type=str, default=None, help="the held-out family (default: each in turn)")
    ap.add_argument("--modality", choices=("mri", "ct"), default="mri", help="family group of the sweep")
    ap.add_argument("--cases-per-family", type=int, default=60, help="training pool per family (80/20 train/val)")
    ap.add_argument("--test-cases", type=int, default=40, help="test pool of the held-out family")
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-time cap per run")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--size", type=int, default=None, help="voxels per axis of the phantoms (default: clinical)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/med_accuracy"))
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--smoke", action="store_true", help="tiny volumes, 1 minute per run: plumbing only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "med_accuracy.json")
    args = ap.parse_args()
    args.train_families = [f.strip() for f in args.train_families.split(",") if f.strip()] \
        if args.train_families else None
    args.smoke_overrides = []
    if args.smoke:
        args.cases_per_family, args.test_cases, args.minutes, args.size = 8, 6, 1.0, 40
        args.smoke_overrides = ["preprocess.resample.spacing=[5.0,5.0,5.0]", "preprocess.crop.size=[32,32,32]",
                                "train.epochs=2", "preprocess.n4.enabled=false"]
    return args


def main() -> None:
    args = parse_args()
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=160)
    runs = plan(args)
    rows: list[dict] = []
    for train, test in runs:
        rows.append(run_one(train, test, args, console))
        write_report(args, rows, complete=len(rows) == len(runs))  # a sweep cut short keeps the runs it made
    title = (f"medical3d cross-family accuracy ({args.cases_per_family} train+val studies per family, "
             f"{args.test_cases} test, {args.minutes:g} min per run)")
    print_table(rows, console, title)
    console.print(f"-> {args.out}")


def write_report(args, rows: list[dict], complete: bool) -> None:
    report = {"targets": TARGETS, "minutes": args.minutes, "cases_per_family": args.cases_per_family,
              "test_cases": args.test_cases, "seed": args.seed, "smoke": args.smoke, "overrides": args.overrides,
              "complete": complete, "rows": rows,
              "all_targets_met": all(all(r["targets_met"].values()) for r in rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
