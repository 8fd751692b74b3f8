"""``vsuite qc eval`` on a part-classifier run: the run's line model on one split of its image-level dataset.

Classification (accuracy, macro AUROC, per-class precision / recall / F1, confusion matrix), the defect score's
AUROC (defective vs good), and at the run's thresholds the part rates the line lives by: escape, false reject,
review. Plots: confusion matrix and ROC in ``RUN/plots/``. Written to ``RUN/metrics.json`` under ``eval.<split>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.metrics import classification_metrics
from common.plots import pyplot, save_confusion_matrix
from common.progress import add_task, make_progress, update_rate
from common.rundir import read_run_json, update_run_json
from industrial_qc.images import read_image
from industrial_qc.part_pipeline import PartPipeline
from industrial_qc.parts import PartSet, data_kind, load_parts
from industrial_qc.verdict import VERDICTS, part_rates


@dataclass
class PartScores:
    """The line model's view of each readable image of a split: true class (N,), probabilities (N, C), defect
    score (N,), verdict (N,); plus one "file: why" per image that could not be read."""

    targets: np.ndarray
    probs: np.ndarray
    scores: np.ndarray
    verdicts: list[str]
    errors: list[str]


def eval_dataset(run: dict, run_dir: Path, data: Path, labels: list[str]) -> PartSet:
    """``data`` loaded as training loaded it (the run's ``part`` settings and seed: the same split drawn), its
    classes checked against the run's ``labels``."""
    if data_kind(data) == "detect":
        raise InputError(f"{data}: {run_dir} is a part-classifier run; evaluate it on image-level data (a folder "
                         "with one sub-folder per class, or a CSV manifest path,label[,split])")
    cfg = run.get("config") or {}
    part = cfg.get("part") or {}
    try:
        ds = load_parts(data, part["good_labels"], part["split_fractions"], int(cfg["seed"]), check_images=False)
    except KeyError as exc:
        raise InputError(f"{run_dir}/run.json: config snapshot lacks {exc}; cannot redraw the run's split") from None
    unknown = sorted(set(ds.labels) - set(labels))
    if unknown:
        raise InputError(f"{data}: classes {unknown} are not among the run's {labels}")
    return ds


def score_split(pipe: PartPipeline, ds: PartSet, split: str, step: Callable[[], None] | None = None) -> PartScores:
    """Every image of ``split`` through the line model; one that does not decode is listed, not scored."""
    remap = [pipe.labels.index(name) for name in ds.labels]  # dataset label index -> the run's
    targets, results, errors = [], [], []
    for path, y in ds.split(split):
        try:
            img = read_image(path)
        except InputError as exc:
            errors.append(str(exc))
        else:
            an = pipe.analyse(img)
            results.append((an.probs, pipe.result(an)["verdict"]))
            targets.append(remap[y])
        if step is not None:
            step()
    p = np.array([r[0] for r in results], np.float64).reshape(-1, len(pipe.labels))
    return PartScores(np.array(targets, np.int64), p, 1.0 - p[:, pipe.good_index], [r[1] for r in results], errors)


def part_metrics(s: PartScores, pipe: PartPipeline) -> dict:
    """Classification, defect-score AUROC, part rates and verdicts per true class (see the module docstring)."""
    ok = np.isfinite(s.probs).all(axis=1)
    defective = s.targets != pipe.good_index
    v = np.asarray(s.verdicts)
    cls = classification_metrics(s.targets[ok], s.probs[ok], pipe.labels) if ok.any() else {}
    return {
        "classification": cls,
        "defect_auroc": _binary_auroc(defective[ok], s.scores[ok]),
        "parts": part_rates(s.verdicts, defective),
        "review_rate": float((v == "REVIEW").mean()) if len(v) else None,
        "verdicts_by_class": {name: {k: int(((s.targets == i) & (v == k)).sum()) for k in VERDICTS}
                              for i, name in enumerate(pipe.labels)},
        "non_finite": int((~ok).sum()),
    }


def _binary_auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if y.any() and (~y).any() else None


def save_roc(path: Path, defective: np.ndarray, score: np.ndarray, fail: float, review: float, title: str = ""
             ) -> Path:
    """ROC of the defect score (defective vs good) with the run's review and fail thresholds marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    y = np.asarray(defective, bool)
    if y.any() and (~y).any():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(y, score):.3f}")
        for t, colour, name in ((review, "orange", "review"), (fail, "red", "fail")):
            ax.scatter([(score[~y] >= t).mean()], [(score[y] >= t).mean()], c=colour, zorder=3,
                       label=f"{name} {t:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="good parts at or above (false-alarm rate)", ylabel="defective parts at or above (recall)",
           title=f"ROC {title}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate_part_run(run_dir: Path, data: Path, split: str = "test", *, console=None, run: dict | None = None
                      ) -> dict:
    """All metrics of a part run on one split of ``data``; written to ``run_dir/metrics.json`` (``eval.<split>``),
    the summary to run.json, the plots to ``run_dir/plots/eval_<split>_{confusion,roc}.png``."""
    run_dir, data = Path(run_dir), Path(data)
    run = run or read_run_json(run_dir)
    pipe = PartPipeline.from_run(run_dir, run=run)
    ds = eval_dataset(run, run_dir, data, pipe.labels)
    if not ds.split(split):
        raise InputError(f"{data}: no images in split {split!r} (splits: {', '.join(ds.summary()) or 'none'})")
    with make_progress(console) as progress:
        task = add_task(progress, f"inspect {split}", total=len(ds.split(split)))

        def step() -> None:
            progress.update(task, advance=1)
            update_rate(progress, task, "part")

        scores = score_split(pipe, ds, split, step)
    metrics = {"mode": "part", "split": split, "data": str(data), "images": len(ds.split(split)),
               "errors": scores.errors, **part_metrics(scores, pipe),
               "thresholds": {"fail": pipe.fail_threshold, "review": pipe.review_threshold},
               "model": pipe.classifier.model.path.name}
    metrics["plots"] = [str(p) for p in _plots(run_dir / "plots", split, scores, metrics, pipe)]
    _store(run_dir, run, split, metrics)
    return metrics


def _plots(folder: Path, split: str, s: PartScores, metrics: dict, pipe: PartPipeline) -> list[Path]:
    cm = metrics["classification"].get("confusion_matrix")
    out = [save_confusion_matrix(folder / f"eval_{split}_confusion.png", cm, pipe.labels,
                                 f"part classifier, {split}")] if cm else []
    ok = np.isfinite(s.scores)
    out.append(save_roc(folder / f"eval_{split}_roc.png", (s.targets != pipe.good_index)[ok], s.scores[ok],
                        pipe.fail_threshold, pipe.review_threshold, f"defect score, {split}"))
    return out


def _store(run_dir: Path, run: dict, split: str, metrics: dict) -> None:
    path = run_dir / "metrics.json"
    all_metrics = json.loads(path.read_text()) if path.is_file() else {}
    all_metrics.setdefault("eval", {})[split] = metrics
    path.write_text(json.dumps(all_metrics, indent=2))
    update_run_json(run_dir, metrics={**run.get("metrics", {}), f"eval_{split}": part_summary(metrics)})


def part_summary(metrics: dict) -> dict:
    """The headline numbers of a part run's eval (for run.json and the CLI table)."""
    parts, cls = metrics.get("parts", {}), metrics.get("classification", {})
    return {
        "accuracy": cls.get("accuracy"),
        "balanced_accuracy": cls.get("balanced_accuracy"),
        "macro_auroc": cls.get("auroc"),
        "defect_auroc": metrics.get("defect_auroc"),
        "escape_rate": parts.get("escape_rate"),
        "false_reject_rate": parts.get("false_reject_rate"),
        "review_rate": metrics.get("review_rate"),
        "review_rate_good": parts.get("review_rate_good"),
        "review_rate_defective": parts.get("review_rate_defective"),
    }
