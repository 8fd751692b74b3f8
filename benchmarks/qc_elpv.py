"""Real-data benchmark: industrial_qc's part classifier against a plain torchvision ResNet-18 on the ELPV
electroluminescence solar-cell images (``elpv-dataset``: 2,624 cells, 300 x 300 px, mono- and polycrystalline,
each labelled by experts with a defect probability 0, 1/3, 2/3 or 1).

Task: functional (p < 0.5) vs defective (p >= 0.5). Split stratified by defect probability and cell type: 25 %
test, 75 % train, of which a seeded 15 % is val (the same split for both sides and for the four-class run).

    make bench-elpv      # installs elpv-dataset into .venv: a benchmark-only dependency, not in pyproject.toml
    .venv/bin/python benchmarks/qc_elpv.py --minutes 30 --seeds 0,1 --four-class --json bench_out/qc_elpv.json

Smoke run (numbers meaningless): ``--minutes 1 --limit 300 --seeds 0``.

The data is CC BY-NC-SA: its images never go into the repository. The benchmark writes the cells as PNG files and
the CSV manifests (``path,label,split``) into ``--workdir`` (default /tmp/qc_elpv), outside the repository.

Suite, as a user runs it: ``vsuite qc train MANIFEST.csv --out RUN --max-minutes M --set seed=S --set
'part.good_labels=[functional]'`` (default config: from scratch), then ``vsuite score RUN <test images> --out
scores.jsonl``; every metric is computed from those records. ``accuracy`` / ``f1`` / per-cell-type accuracies:
defective when the defect score (1 - P(functional)) >= 0.5, i.e. the argmax, the rule of the peer and of the
published anchors; ``accuracy_verdict``: PASS = functional, FAIL or REVIEW = defective (what the line sorts out);
escape rate, false-reject rate and REVIEW share at the run's own thresholds (read from val).
Peer: a torchvision ResNet-18 training loop as the tutorials write it: from scratch, same train/val images, same
wall-time budget M, cross-entropy, Adam (lr 1e-3, batch 32), random horizontal/vertical flips, ImageNet-style
normalisation, inputs resized to the suite's ``part.image_size`` (from its run config), best-val-accuracy epoch
kept, test by argmax. The suite may train in bf16 autocast on a CPU with native bf16 (config
``part.train.cpu_bf16``); the peer keeps PyTorch's CPU default, fp32.
``--four-class`` adds a suite run on the four expert labels (p0, p33, p67, p100; good class p0) with the same
split and budget: its argmax accuracy over the four classes.
Anchors (Deitsch et al. 2019, Solar Energy 185; 25 % held out): fine-tuned ImageNet VGG-19 on a GPU 88.4 %
average accuracy, SVM on hand-crafted features 82.4 %.
Prints a table (one column per side and seed, then the means) and writes JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INSTALL = ".venv/bin/python -m pip install elpv-dataset   (or: make bench-elpv)"
TARGETS = {"accuracy": 0.88}
FOUR = ("p0", "p33", "p67", "p100")  # expert defect probability 0, 1/3, 2/3, 1
TEST_FRAC, VAL_FRAC = 0.25, 0.15  # test of all cells; val of the train part
ROWS = ("accuracy", "auroc", "f1", "accuracy_mono", "accuracy_poly", "accuracy_argmax", "accuracy_verdict",
        "escape_rate", "false_reject_rate", "review_share", "review_rate_good", "review_rate_defective",
        "fail_threshold", "review_threshold", "four_class_accuracy", "four_class_binary_accuracy", "epochs",
        "image_size", "train_minutes", "test_parts")


# ---------------------------------------------------------------- data


def load_elpv():
    """(images (N, 300, 300) uint8, probabilities (N,), cell types (N,)) from the installed package, or exit
    with the install command."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        sys.exit(f"qc_elpv: the ELPV data set is not installed (a benchmark-only dependency):\n    {INSTALL}")
    return load_dataset()


def write_cells(workdir: Path, console) -> list[dict]:
    """Every cell as ``WORKDIR/images/cellNNNN.png`` (written once) with its probability and type; the list is
    kept in ``WORKDIR/cells.csv``."""
    index = workdir / "cells.csv"
    if index.is_file():
        with index.open() as f:
            cells = [dict(r, p=float(r["p"])) for r in csv.DictReader(f)]
        if all((workdir / c["path"]).is_file() for c in cells):
            return cells
    from PIL import Image

    with console.status("reading the ELPV package"):
        images, probs, types = load_elpv()
    (workdir / "images").mkdir(parents=True, exist_ok=True)
    cells = []
    for i, (img, p, t) in enumerate(zip(images, probs, types, strict=True)):
        rel = f"images/cell{i + 1:04d}.png"  # the package's own names (its labels.csv order)
        Image.fromarray(img).save(workdir / rel)
        cells.append({"path": rel, "p": float(p), "type": str(t)})
    with index.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "p", "type"])
        w.writeheader()
        w.writerows(cells)
    console.print(f"wrote {len(cells)} cells to {workdir / 'images'}")
    return cells


def four_label(p: float) -> str:
    return FOUR[round(p * 3)]


def binary_label(p: float) -> str:
    return "defective" if p >= 0.5 else "functional"


def _strata(cells: list[dict]) -> dict[tuple, list[int]]:
    """Cell indices per (expert label, cell type): both the binary and the four-class label are kept balanced."""
    out: dict[tuple, list[int]] = {}
    for i, c in enumerate(cells):
        out.setdefault((four_label(c["p"]), c["type"]), []).append(i)
    return out


def limit_cells(cells: list[dict], limit: int | None, seed: int) -> list[dict]:
    """A stratified subset of ``limit`` cells for smoke runs (at least 4 per stratum so every split has each)."""
    if not limit or limit >= len(cells):
        return cells
    import numpy as np

    rng = np.random.default_rng(seed + 7919)
    keep = []
    for idx in _strata(cells).values():
        n = min(len(idx), max(4, round(limit * len(idx) / len(cells))))
        keep += rng.choice(idx, n, replace=False).tolist()
    return [cells[i] for i in sorted(keep)]


def split_cells(cells: list[dict], seed: int) -> list[str]:
    """train / val / test per cell: per stratum a seeded 25 % test, then 15 % of the rest val."""
    import numpy as np

    rng = np.random.default_rng(seed)
    split = ["train"] * len(cells)
    for idx in _strata(cells).values():
        order = rng.permutation(idx)
        n_test = round(len(order) * TEST_FRAC)
        n_val = round((len(order) - n_test) * VAL_FRAC)
        for i in order[:n_test]:
            split[i] = "test"
        for i in order[n_test:n_test + n_val]:
            split[i] = "val"
    return split


def write_manifest(path: Path, cells: list[dict], split: list[str], label) -> Path:
    """``path,label,split`` with image paths relative to the manifest (it sits in the work folder)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows([c["path"], label(c["p"]), s] for c, s in zip(cells, split, strict=True))
    return path


def split_counts(cells: list[dict], split: list[str]) -> dict:
    out: dict[str, dict[str, int]] = {}
    for c, s in zip(cells, split, strict=True):
        key = f"{binary_label(c['p'])}/{c['type']}"
        out.setdefault(s, {}).setdefault(key, 0)
        out[s][key] += 1
    return out


# ---------------------------------------------------------------- metrics


def binary_metrics(defective, score, types) -> dict:
    """Accuracy, AUROC, F1 (defective positive) and per-cell-type accuracy, deciding defective at score >= 0.5."""
    import numpy as np
    from sklearn.metrics import f1_score, roc_auc_score

    y, s, t = np.asarray(defective, bool), np.asarray(score, float), np.asarray(types)
    pred = s >= 0.5
    out = {"accuracy": float((pred == y).mean()), "f1": float(f1_score(y, pred, zero_division=0)),
           "auroc": float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None, "test_parts": len(y)}
    for kind in ("mono", "poly"):
        m = t == kind
        out[f"accuracy_{kind}"] = float((pred[m] == y[m]).mean()) if m.any() else None
    return out


def suite_metrics(records: list[dict], truth: dict[str, dict], run_dir: Path) -> dict:
    """Metrics of one binary suite run from its ``vsuite score`` records (matched to the cells by file path)."""
    import numpy as np

    from industrial_qc.verdict import part_rates

    ok = [r for r in records if r.get("status") == "ok"]
    cells = [truth[str(Path(r["file"]).resolve())] for r in ok]
    defective = [c["p"] >= 0.5 for c in cells]
    out = binary_metrics(defective, [r["max_defect_score"] for r in ok], [c["type"] for c in cells])
    argmax = [max(r["probabilities"], key=r["probabilities"].get) for r in ok]
    out["accuracy_argmax"] = float(np.mean([a == binary_label(c["p"]) for a, c in zip(argmax, cells, strict=True)]))
    verdicts = [r["verdict"] for r in ok]
    out["accuracy_verdict"] = float(np.mean([(v != "PASS") == d for v, d in zip(verdicts, defective, strict=True)]))
    rates = part_rates(verdicts, defective)
    out.update({k: rates[k] for k in ("escape_rate", "false_reject_rate", "review_rate_good",
                                      "review_rate_defective", "verdicts")})
    out["review_share"] = rates["verdicts"]["REVIEW"] / max(len(ok), 1)
    out["score_errors"] = len(records) - len(ok)
    out.update(run_facts(run_dir))
    return out


def four_class_metrics(records: list[dict], truth: dict[str, dict], run_dir: Path) -> dict:
    """Argmax accuracy over p0 / p33 / p67 / p100, per-class recall, and the binary accuracy it implies."""
    import numpy as np

    ok = [r for r in records if r.get("status") == "ok"]
    cells = [truth[str(Path(r["file"]).resolve())] for r in ok]
    true = [four_label(c["p"]) for c in cells]
    pred = [max(r["probabilities"], key=r["probabilities"].get) for r in ok]
    hit = np.array([a == b for a, b in zip(pred, true, strict=True)])
    p_def = [r["probabilities"].get("p67", 0.0) + r["probabilities"].get("p100", 0.0) for r in ok]
    out = {"four_class_accuracy": float(hit.mean()),
           "four_class_recall": {k: float(hit[[t == k for t in true]].mean()) for k in FOUR if k in true},
           "four_class_binary_accuracy": float(np.mean([(p >= 0.5) == (c["p"] >= 0.5)
                                                         for p, c in zip(p_def, cells, strict=True)])),
           "score_errors": len(records) - len(ok)}
    facts = run_facts(run_dir)
    out.update({f"four_class_{k}": v for k, v in facts.items()})
    return out


def run_facts(run_dir: Path) -> dict:
    """Epochs, thresholds, image size and training minutes of a suite run (from its metrics.json / run.json)."""
    run = json.loads((run_dir / "run.json").read_text())
    m = json.loads((run_dir / "metrics.json").read_text()).get("train", {}) \
        if (run_dir / "metrics.json").is_file() else {}
    th = m.get("thresholds", {})
    return {"epochs": m.get("classifier", {}).get("epochs"), "fail_threshold": th.get("fail"),
            "review_threshold": th.get("review"), "image_size": run["config"]["part"]["image_size"],
            "val_accuracy": m.get("classifier", {}).get("accuracy"), "line_model": run["models"]["line"]}


# ---------------------------------------------------------------- suite


def vsuite() -> list[str]:
    exe = Path(sys.executable).with_name("vsuite")
    if not exe.is_file():
        found = shutil.which("vsuite")
        if not found:
            sys.exit("qc_elpv: the vsuite command is not installed (make setup)")
        exe = Path(found)
    return [str(exe)]


def run_suite(manifest: Path, good: str, test_paths: list[Path], out: Path, minutes: float, seed: int,
              overrides: list[str], console) -> tuple[list[dict], float]:
    """``vsuite qc train`` on the manifest, then ``vsuite score`` on the test images: (records, train minutes)."""
    if out.exists():
        shutil.rmtree(out)
    sets = [f"seed={seed}", f"part.good_labels=[{good}]", *overrides]
    cmd = [*vsuite(), "qc", "train", str(manifest), "--out", str(out / "run"), "--max-minutes", str(minutes)]
    for s in sets:
        cmd += ["--set", s]
    console.print("suite:", " ".join(cmd), markup=False, highlight=False)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    train_min = (time.monotonic() - t0) / 60
    scores = out / "scores.jsonl"
    subprocess.run([*vsuite(), "score", str(out / "run"), *map(str, test_paths), "--out", str(scores)], check=True)
    return [json.loads(line) for line in scores.read_text().splitlines() if line.strip()], train_min


# ---------------------------------------------------------------- peer


def run_peer(workdir: Path, cells: list[dict], split: list[str], size: int, minutes: float, seed: int,
             console) -> dict:
    """A plain torchvision ResNet-18 loop, as the tutorials write it, on the same split and budget."""
    import numpy as np
    import torch
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(seed)
    np.random.seed(seed)
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.ToTensor(),
                          norm])
    eval_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), norm])

    def loader(name: str, tf, shuffle: bool):
        items = [(workdir / c["path"], int(c["p"] >= 0.5)) for c, s in zip(cells, split, strict=True) if s == name]
        return torch.utils.data.DataLoader(_CellSet(items, tf), batch_size=32, shuffle=shuffle, num_workers=0,
                                           generator=torch.Generator().manual_seed(seed))

    train_dl, val_dl, test_dl = loader("train", train_tf, True), loader("val", eval_tf, False), \
        loader("test", eval_tf, False)
    model = torchvision.models.resnet18(weights=None, num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    deadline = time.monotonic() + minutes * 60
    t0, epochs, best_acc, best_state = time.monotonic(), 0, -1.0, None
    while time.monotonic() < deadline:
        model.train()
        for x, y in train_dl:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            if time.monotonic() >= deadline:
                break
        epochs += 1
        probs, y_val = _predict(model, val_dl)
        acc = float((probs.argmax(1) == y_val).mean())
        console.print(f"peer epoch {epochs}: loss {loss.item():.3f}, val accuracy {acc:.3f} "
                      f"({(time.monotonic() - t0) / 60:.1f} min)", highlight=False)
        if acc > best_acc:
            best_acc, best_state = acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_min = (time.monotonic() - t0) / 60
    model.load_state_dict(best_state)
    probs, y_test = _predict(model, test_dl)
    types = [c["type"] for c, s in zip(cells, split, strict=True) if s == "test"]
    out = binary_metrics(y_test == 1, probs[:, 1], types)
    out["accuracy_argmax"] = float((probs.argmax(1) == y_test).mean())
    out.update(epochs=epochs, image_size=size, train_minutes=train_min, val_accuracy=best_acc)
    return out


class _CellSet:
    """(path, label) pairs read as RGB PIL images through a torchvision transform."""

    def __init__(self, items: list[tuple[Path, int]], tf) -> None:
        self.items, self.tf = items, tf

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as im:
            return self.tf(im.convert("RGB")), label


def _predict(model, dl):
    import numpy as np
    import torch

    model.eval()
    probs, ys = [], []
    with torch.no_grad():
        for x, y in dl:
            probs.append(torch.softmax(model(x), 1).numpy())
            ys.append(y.numpy())
    return np.concatenate(probs), np.concatenate(ys)


# ---------------------------------------------------------------- report


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if v > 1.5 else f"{v:.4f}"
    return str(v)


def summarise(rows: list[dict]) -> dict:
    """Mean and SD over seeds of every numeric metric, per side."""
    import numpy as np

    out: dict[str, dict] = {}
    for side in ("suite", "peer"):
        runs = [r[side] for r in rows if r.get(side)]
        if not runs:
            continue
        keys = {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out[side] = {}
        for k in sorted(keys):
            vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
            out[side][k] = float(np.mean(vals))
            out[side][f"{k}_sd"] = float(np.std(vals))
    return out


def print_table(rows: list[dict], summary: dict, title: str, console) -> None:
    from rich.table import Table

    table = Table(title=title)
    cols = [(f"{side} s{r['seed']}", r[side]) for r in rows for side in ("suite", "peer") if r.get(side)]
    cols += [(f"{side} mean", summary[side]) for side in ("suite", "peer") if side in summary and len(rows) > 1]
    for name in ("metric", "target", *(c for c, _ in cols)):
        table.add_column(name, justify="left" if name == "metric" else "right")
    def cell(d: dict, k: str) -> str:  # means carry the seed-to-seed SD for the headline metrics
        sd = d.get(f"{k}_sd") if k in ("accuracy", "auroc", "f1") else None
        return _fmt(d.get(k)) + (f" ± {sd:.3f}" if sd is not None else "")

    for k in ROWS:
        if any(k in d for _, d in cols):
            table.add_row(k, _fmt(TARGETS.get(k)), *(cell(d, k) for _, d in cols))
    console.print(table)


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per run and side (wall minutes)")
    ap.add_argument("--seed", type=int, action="append", default=[], help="split and training seed (repeatable)")
    ap.add_argument("--seeds", type=str, default=None, help="comma-separated seeds, e.g. 0,1 (default: 0)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/qc_elpv"),
                    help="images, manifests and runs (outside the repository: the data is CC BY-NC-SA)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--four-class", action="store_true", help="also a four-class suite run (p0, p33, p67, p100)")
    ap.add_argument("--limit", type=int, default=None, help="a stratified subset of N cells (smoke runs)")
    ap.add_argument("--peer-size", type=int, default=None,
                    help="peer input size (default: the suite run's part.image_size)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="suite config override")
    ap.add_argument("--json", type=Path, default=None, help="JSON report (default: WORKDIR/qc_elpv.json)")
    args = ap.parse_args()
    seeds = list(args.seed) + ([int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else [])
    args.seeds = list(dict.fromkeys(seeds)) or [0]
    repo = Path(__file__).resolve().parents[1]
    if args.workdir.resolve().is_relative_to(repo):
        ap.error(f"--workdir {args.workdir}: inside the repository; the ELPV images (CC BY-NC-SA) must stay out")
    return args


def default_image_size() -> int:
    from industrial_qc.config import load_qc_config

    return load_qc_config(None).part.image_size


def run_seed(args, cells: list[dict], seed: int, console) -> dict:
    """Both sides (and the four-class run) on one seeded split."""
    split = split_cells(cells, seed)
    tag = f"seed{seed}" + (f"_limit{args.limit}" if args.limit else "")
    work = args.workdir / tag
    work.mkdir(parents=True, exist_ok=True)
    test_paths = [(args.workdir / c["path"]).resolve() for c, s in zip(cells, split, strict=True) if s == "test"]
    truth = {str((args.workdir / c["path"]).resolve()): c for c in cells}
    row = {"seed": seed, "splits": split_counts(cells, split)}
    sizes = {k: sum(v.values()) for k, v in row["splits"].items()}
    console.rule(f"seed {seed}: {sizes['train']} train, {sizes['val']} val, {sizes['test']} test cells")
    manifest = write_manifest(args.workdir / f"elpv_binary_{tag}.csv", cells, split, binary_label)
    records, minutes = run_suite(manifest, "functional", test_paths, work / "suite", args.minutes, seed,
                                 args.overrides, console)
    row["suite"] = suite_metrics(records, truth, work / "suite" / "run") | {"train_minutes": minutes}
    if args.four_class:
        manifest4 = write_manifest(args.workdir / f"elpv_four_{tag}.csv", cells, split, four_label)
        records4, minutes4 = run_suite(manifest4, "p0", test_paths, work / "suite4", args.minutes, seed,
                                       args.overrides, console)
        four = four_class_metrics(records4, truth, work / "suite4" / "run") | {"four_class_train_minutes": minutes4}
        row["suite"].update(four)
    if not args.skip_peer:
        size = args.peer_size or row["suite"].get("image_size") or default_image_size()
        row["peer"] = run_peer(args.workdir, cells, split, size, args.minutes, seed, console)
    return row


def main() -> int:
    args = parse_args()
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a log file: the whole table, not 80 columns of it
        console = Console(width=160)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cells = limit_cells(write_cells(args.workdir, console), args.limit, 0)
    console.print(f"{len(cells)} cells; budget {args.minutes:g} min per run; seeds {args.seeds}")
    rows = [run_seed(args, cells, seed, console) for seed in args.seeds]
    summary = summarise(rows)
    title = (f"ELPV functional vs defective ({rows[0]['suite']['test_parts']} test cells, "
             f"{args.minutes:g} min per side, from scratch)")
    print_table(rows, summary, title, console)
    report = {"minutes": args.minutes, "seeds": args.seeds, "limit": args.limit, "cells": len(cells),
              "overrides": args.overrides, "four_class": args.four_class, "targets": TARGETS,
              "anchors": {"deitsch2019_vgg19_finetuned_gpu": 0.884, "deitsch2019_svm": 0.824},
              "rows": rows, "summary": summary}
    out = args.json or args.workdir / "qc_elpv.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    console.print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
