"""Radiology review data, without streamlit: results rows -> studies, the prioritised worklist, artifacts.

A medical3d results row (``vsuite score`` on a medical3d run) holds ``source`` (study path), ``study``, ``label``,
``probabilities`` ({label: p}; a JSON string in CSV/Parquet), ``verdict`` (positive | negative | REVIEW),
QA fields (original size and spacing, orientation, series, N4 time, bias range, CV before/after, ...),
``status``, ``reason``, and optionally the NIfTI paths of the preprocessed volume, the bias field and the
Grad-CAM map. Readers here accept missing optional fields and a few spellings of each.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pandas as pd

from common.results import decode_nested, read_records

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
ARTIFACT_KEYS = {
    "preprocessed": ("preprocessed", "preprocessed_path", "preprocessed_nifti", "prep_path", "network_input"),
    "bias_field": ("bias_field", "bias_field_path", "bias", "bias_path", "bias_nifti", "n4_bias_field"),
    "gradcam": ("gradcam", "gradcam_path", "gradcam_nifti", "grad_cam", "cam_path", "cam"),
    "corrected": ("corrected", "n4_corrected", "corrected_path", "n4_path"),
}
CORE_KEYS = {"source", "study", "study_id", "label", "predicted_label", "prediction", "probabilities", "probs",
             "verdict", "status", "reason", "timestamp", "run_id", "p_positive", "score", "qa", "gradcam_png"}
PRIORITY = {"positive": 0, "review": 0, "negative": 1, "error": 2}


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""


def _study_name(source: str) -> str:
    name = Path(source).name
    for s in VOLUME_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def positive_label(run: dict | None, labels: list[str]) -> str | None:
    """The class whose probability orders the worklist: run.json's (older runs: in its ``decision``), else the
    config's, else the second label."""
    run = run or {}
    for v in (run.get("positive_label"), (run.get("decision") or {}).get("positive_label"),
              ((run.get("config") or {}).get("data") or {}).get("positive_label")):
        if v:
            return str(v)
    return labels[1] if len(labels) == 2 else (labels[-1] if labels else None)


def _probabilities(row: dict, labels: list[str]) -> dict[str, float]:
    probs = decode_nested(row.get("probabilities", row.get("probs")))
    if isinstance(probs, list) and len(probs) == len(labels):
        probs = dict(zip(labels, probs, strict=True))
    out = {str(k): float(v) for k, v in probs.items() if _present(v)} if isinstance(probs, dict) else {}
    for k, v in row.items():  # flat columns: prob_<label> / p_<label>
        for pre in ("prob_", "p_"):
            if k.startswith(pre) and k != "p_positive" and _present(v) and k[len(pre):] not in out:
                with contextlib.suppress(TypeError, ValueError):
                    out[k[len(pre):]] = float(v)
    return out


def norm_row(row: dict, index: int, labels: list[str], pos: str | None) -> dict:
    source = str(row.get("source") or row.get("path") or row.get("study") or f"row {index}")
    status = str(row.get("status") or "ok").lower()
    probs = _probabilities(row, labels)
    label = next((row[k] for k in ("label", "predicted_label", "prediction") if _present(row.get(k))), None)
    if label is None and probs:
        label = max(probs, key=probs.get)
    p_pos = probs.get(pos) if pos is not None else None
    for k in ("p_positive", "score"):
        if p_pos is None and _present(row.get(k)):
            with contextlib.suppress(TypeError, ValueError):
                p_pos = float(row[k])
    verdict = str(row.get("verdict") or "").strip()
    verdict = "ERROR" if status != "ok" else ("REVIEW" if verdict.lower() == "review" else verdict.lower() or "-")
    qa = decode_nested(row.get("qa"))
    qa = dict(qa) if isinstance(qa, dict) else {}
    artifact_fields = {k for keys in ARTIFACT_KEYS.values() for k in keys}
    for k, v in row.items():
        if k not in CORE_KEYS and k not in artifact_fields and not k.startswith(("prob_", "p_")) and _present(v):
            qa.setdefault(k, decode_nested(v))
    artifacts = {}
    for name, keys in ARTIFACT_KEYS.items():
        v = next((row[k] for k in keys if _present(row.get(k))), None)
        if isinstance(v, str):
            artifacts[name] = v
    return {
        "index": index,
        "item": source,
        "source": source,
        "study": str(row.get("study") or row.get("study_id") or _study_name(source)),
        "status": status,
        "reason": row.get("reason") if _present(row.get("reason")) else None,
        "label": None if label is None else str(label),
        "probabilities": probs,
        "p_positive": p_pos,
        "verdict": verdict,
        "timestamp": row.get("timestamp") if _present(row.get("timestamp")) else None,
        "run_id": row.get("run_id") if _present(row.get("run_id")) else None,
        "modality": str(qa.get("modality") or "").lower() or None,
        "qa": qa,
        "artifacts": artifacts,
        "raw": {k: decode_nested(v) for k, v in row.items() if _present(v)},
    }


def load_studies(path: Path | str, run: dict | None) -> list[dict]:
    """Normalised rows of a medical3d results file (.csv, .parquet or .jsonl); InputError when missing."""
    rows = read_records(path)
    labels = list((run or {}).get("labels") or [])
    if not labels:
        seen: list[str] = []
        for r in rows:
            p = decode_nested(r.get("probabilities", r.get("probs")))
            for k in p if isinstance(p, dict) else []:
                if k not in seen:
                    seen.append(str(k))
        labels = seen
    pos = positive_label(run, labels)
    return [norm_row(r, i, labels, pos) for i, r in enumerate(rows)]


def worklist(studies: list[dict], latest: dict[str, dict] | None = None) -> pd.DataFrame:
    """Studies by priority: positive and REVIEW first, then negative, then errors; each by p(positive) desc."""
    latest = latest or {}
    rows = []
    for s in studies:
        rev = latest.get(s["item"])
        rows.append({
            "item": s["item"],
            "study": s["study"],
            "verdict": s["verdict"],
            "label": s["label"] or "",
            "p_positive": s["p_positive"],
            "status": "reviewed" if rev else "not reviewed",
            "sign_off": f"{rev['decision']} ({rev['reviewer']})" if rev else "",
            "reason": s["reason"] or "",
            "_rank": PRIORITY.get(s["verdict"].lower(), 1),
        })
    df = pd.DataFrame(rows, columns=["item", "study", "verdict", "label", "p_positive", "status", "sign_off",
                                     "reason", "_rank"])
    df["_p"] = df["p_positive"].astype(float).fillna(-1.0)
    df = df.sort_values(["_rank", "_p", "study"], ascending=[True, False, True], kind="stable")
    return df.drop(columns=["_rank", "_p"]).reset_index(drop=True)


def find_artifact(study: dict, name: str, results_dir: Path | None, run_dir: Path | None) -> Path | None:
    """The NIfTI of ``name`` (preprocessed | bias_field | gradcam) for a study: the row's path when the scorer
    wrote one, else the files other commands write under their usual names: ``vsuite med preprocess``
    (``<study>_preprocessed.nii.gz``, ``<study>_bias.nii.gz`` next to the results) and ``vsuite med eval``
    (``RUN/eval/<split>/gradcam/<study>_cam.nii.gz`` and ``_image.nii.gz``, the preprocessed grid)."""
    given = study["artifacts"].get(name)
    if given:
        return resolve_path(given, results_dir)
    sid = study["study"]
    names = {"preprocessed": [f"{sid}_preprocessed.nii.gz", f"{sid}_image.nii.gz"],
             "bias_field": [f"{sid}_bias.nii.gz", f"{sid}_bias_field.nii.gz"],
             "gradcam": [f"{sid}_cam.nii.gz", f"{sid}_gradcam.nii.gz"]}.get(name, [])
    folders: list[Path] = []
    if results_dir is not None:
        folders += [results_dir, *sorted(p for p in results_dir.iterdir() if p.is_dir())]
    if run_dir is not None and (run_dir / "eval").is_dir():
        folders += sorted((run_dir / "eval").glob("*/gradcam"))
    for folder in folders:
        for n in names:
            if (folder / n).is_file():
                return folder / n
    return None


def resolve_path(path: str, results_dir: Path | None) -> Path:
    """A path from a results row: absolute, else relative to the working folder, else to the results folder."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists() or results_dir is None:
        return p
    alt = results_dir / p
    return alt if alt.exists() else p


# ------------------------------------------------------------------------------------------------ operating point
TRADEOFF_MEASURES = {"sensitivity": "sensitivity", "specificity": "specificity", "review": "REVIEW share",
                     "errors_in_review": "errors in REVIEW"}


def _share(v) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _tradeoff_rows(rows) -> list[dict]:
    """The well-formed rows of a stored trade-off (run.json is read, not trusted): a finite threshold, shares or
    None, sorted by threshold."""
    out = []
    for r in rows if isinstance(rows, list) else []:
        if isinstance(r, dict) and _share(r.get("threshold")) is not None:
            out.append({"threshold": float(r["threshold"]), **{k: _share(r.get(k)) for k in TRADEOFF_MEASURES},
                        "errors": r["errors"] if isinstance(r.get("errors"), int) else None,
                        "grid": bool(r.get("grid")), "chosen": bool(r.get("chosen"))})
    return sorted(out, key=lambda r: r["threshold"])


def tradeoff_views(run: dict | None) -> list[dict]:
    """The trade-offs a run's run.json carries (``medical3d.operating``): the training evidence's (``metrics``:
    validation or out-of-fold, with its operating point report) and each ``vsuite med eval`` split's. Each:
    {name, rows, threshold (the run's, or None), point (the report or None)}; [] for runs from before them."""
    run = run or {}
    views = []
    metrics = run.get("metrics") if isinstance(run.get("metrics"), dict) else {}
    point = metrics.get("operating_point") if isinstance(metrics.get("operating_point"), dict) else None
    sources = [(f"training evidence ({'out-of-fold' if (point or {}).get('source') == 'kfold' else 'validation'})",
                metrics.get("tradeoff"), point)]
    evals = run.get("eval") if isinstance(run.get("eval"), dict) else {}
    sources += [(f"eval: {split}", m.get("tradeoff"), None) for split, m in evals.items() if isinstance(m, dict)]
    for name, rows, pt in sources:
        rows = _tradeoff_rows(rows)
        if rows:
            chosen = next((r["threshold"] for r in rows if r["chosen"]), None)
            views.append({"name": name, "rows": rows, "threshold": chosen, "point": pt})
    return views


def tradeoff_table(rows: list[dict]) -> pd.DataFrame:
    """The 0.05-grid rows and the run's threshold (marked), as the app's table: shares in [0, 1]."""
    shown = [r for r in rows if r["grid"] or r["chosen"]]
    return pd.DataFrame([{"threshold": r["threshold"], **{name: r[k] for k, name in TRADEOFF_MEASURES.items()},
                          "errors": r["errors"], "run's threshold": "◀" if r["chosen"] else ""} for r in shown],
                        columns=["threshold", *TRADEOFF_MEASURES.values(), "errors", "run's threshold"])


def tradeoff_chart_spec(rows: list[dict], threshold: float | None) -> dict:
    """A Vega-Lite spec: sensitivity, specificity, REVIEW share and errors in REVIEW over every stored threshold
    (step lines), with a rule at the run's threshold."""
    values = [{"threshold": r["threshold"], "measure": name, "value": r[k]}
              for r in rows for k, name in TRADEOFF_MEASURES.items() if r[k] is not None]
    layers: list[dict] = [{
        "data": {"values": values},
        "mark": {"type": "line", "interpolate": "step-after"},
        "encoding": {"x": {"field": "threshold", "type": "quantitative", "scale": {"domain": [0, 1]}},
                     "y": {"field": "value", "type": "quantitative", "scale": {"domain": [0, 1]}, "title": "share"},
                     "color": {"field": "measure", "type": "nominal", "sort": list(TRADEOFF_MEASURES.values())}}}]
    if threshold is not None:
        layers.append({"data": {"values": [{"threshold": threshold, "label": f"run's threshold {threshold:.3f}"}]},
                       "mark": {"type": "rule", "strokeDash": [4, 3], "color": "black"},
                       "encoding": {"x": {"field": "threshold", "type": "quantitative"},
                                    "tooltip": {"field": "label", "type": "nominal"}}})
    return {"layer": layers, "height": 260}
