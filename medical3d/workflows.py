"""Small library-side helpers behind the CLI commands: synthesis and batch preprocessing with progress, metric
tables. Torch-free: ``vsuite med synth`` and ``vsuite med preprocess`` run on these."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.errors import InputError
from common.progress import add_task, make_progress, update_rate
from common.results import error_record, write_records
from medical3d.config import PreprocessConfig
from medical3d.io import find_studies, study_id


def synth_studies(out: Path, cases: int, modality: str | None, seed: int, *, size: int | None,
                  lesion_radius_mm: tuple[float, float] | None, console: Console, family: str = "classic"
                  ) -> tuple[Path, dict[str, int]]:
    """``synth_dataset`` with a progress bar; returns the manifest and the number of studies per label / format.

    ``modality`` / ``lesion_radius_mm`` None: the family's own.
    """
    from medical3d.families import get_family, resolve_modality
    from medical3d.synth import synth_dataset

    modality = resolve_modality(get_family(family), modality)
    counts: dict[str, int] = {}
    progress = make_progress(console)
    with progress:
        task = add_task(progress, f"synth {family} {modality}", total=cases)

        def on_case(spec) -> None:
            counts[f"{spec.label} / {spec.format}"] = counts.get(f"{spec.label} / {spec.format}", 0) + 1
            progress.update(task, advance=1, info=f"{spec.kind} {spec.orientation}")
            update_rate(progress, task, "study")

        manifest = synth_dataset(out, cases, modality, seed, family=family, size=size,
                                 lesion_radius_mm=lesion_radius_mm, on_case=on_case)
    return manifest, counts


def preprocess_studies(inputs: list[str], out: Path, cfg: PreprocessConfig, *, series_uid: str | None = None,
                       threads: int | None = None, console: Console | None = None) -> list[dict]:
    """Preprocess every study under ``inputs`` into ``out``: ``<id>_preprocessed.nii.gz``, ``<id>_bias.nii.gz``
    (MRI with N4) and ``<id>_qa.json``; also ``qa.csv`` with one row per study. A failing study is an error row.
    ``threads``: SimpleITK worker threads (None: all cores).
    """
    import SimpleITK as sitk

    from medical3d.preprocess import preprocess_study, set_threads

    set_threads(threads)
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    studies = find_studies(inputs)
    rows: list[dict] = []
    used: set[str] = set()
    progress = make_progress(console)
    with progress:
        task = add_task(progress, "preprocess", total=len(studies))
        for path in studies:
            name = study_id(path)
            base, n = name, 2
            while name in used:
                name, n = f"{base}_{n}", n + 1
            used.add(name)
            try:
                result = preprocess_study(path, cfg, series_uid=series_uid if path.is_dir() else None)
            except InputError as exc:
                rows.append(error_record(str(path), str(exc), study=name))
            else:
                sitk.WriteImage(result.image, str(out / f"{name}_preprocessed.nii.gz"), True)
                if result.bias_field is not None:
                    sitk.WriteImage(result.bias_field, str(out / f"{name}_bias.nii.gz"), True)
                (out / f"{name}_qa.json").write_text(json.dumps(result.qa, indent=1), encoding="utf-8")
                rows.append({"source": str(path), "study": name, "status": "ok", "reason": None, **result.qa})
            progress.update(task, advance=1, info=name)
            update_rate(progress, task, "study")
    if rows:
        write_records(rows, out / "qa.csv")
    return rows


def print_metrics(console: Console, m: dict, title: str) -> None:
    """One table of the headline metrics of ``decision_metrics``."""
    table = Table(title=f"{title} metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")

    def fmt(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    for key in ("n", "auroc", "accuracy", "sensitivity", "specificity", "ece", "threshold", "temperature", "review",
                "review_share", "errors_in_review"):
        if key in m:
            table.add_row(key, fmt(m[key]))
    if "confusion_matrix" in m:
        table.add_row("confusion (rows true)", json.dumps(m["confusion_matrix"]))
    console.print(table)


def print_operating_point(console: Console, op: dict | None) -> None:
    """The threshold's evidence (``medical3d.operating.support_report``): one line of counts and bounds, and the
    verdict on the target in green, or in yellow when the evidence cannot support it."""
    if not op:
        return
    where = {"kfold": "out-of-fold (train+val)"}.get(op["source"], op["source"])
    pct = f"{op['confidence'] * 100:g} %"

    def rate(k: str, n: str, bound: str, name: str) -> str:
        b = op.get(bound)
        return f"{name} {op[k]}/{op[n]}" + (f" ({pct} lower bound {b:.3f})" if b is not None else "")

    review = ""
    if op.get("review") is not None:
        held = f"{op['errors_in_review']:.0%} of the {op['errors']} errors" if op.get("errors") else "no error"
        review = f"; REVIEW {op['review']:.0%} of studies, holding {held}"
    line = (f"operating point on {where} evidence ({op['n_pos'] + op['n_neg']} studies): threshold "
            f"{op['threshold']:.3f}; {rate('caught', 'n_pos', 'sensitivity_bound', 'sensitivity')}, "
            f"{rate('cleared', 'n_neg', 'specificity_bound', 'specificity')}{review}")
    console.print(escape(line), soft_wrap=True)
    style = "green" if op["supported"] else "bold yellow"
    console.print(f"[{style}]{'' if op['supported'] else 'warning: '}{escape(op['message'])}[/]", soft_wrap=True)


def tradeoff_rows_around(rows: list[dict], around: int = 3) -> list[dict]:
    """The chosen row and up to ``around`` 0.05-grid rows either side of it (rows sorted by threshold)."""
    shown = [r for r in rows if r.get("grid") or r.get("chosen")]
    at = next((i for i, r in enumerate(shown) if r.get("chosen")), len(shown) // 2)
    return shown[max(0, at - around): at + around + 1]


def print_tradeoff(console: Console, rows: list[dict] | None, title: str, around: int = 3) -> None:
    """A compact trade-off table (``medical3d.operating.tradeoff``): rows around the chosen threshold, marked."""
    if not rows:
        return
    table = Table(title=f"{title} trade-off (* = the run's threshold)")
    for col in ("threshold", "sensitivity", "specificity", "REVIEW share", "errors in REVIEW"):
        table.add_column(col, justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    for r in tradeoff_rows_around(rows, around):
        mark = "*" if r.get("chosen") else " "
        table.add_row(f"{mark}{r['threshold']:.3f}", pct(r["sensitivity"]), pct(r["specificity"]), pct(r["review"]),
                      f"{pct(r['errors_in_review'])} of {r['errors']}", style="bold" if r.get("chosen") else None)
    console.print(table)
