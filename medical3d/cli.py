"""``vsuite med``: synth, preprocess, train, eval. Thin commands: parse, load config, call the library, print.

Top-level imports stay light (typer, pathlib) so ``vsuite --help`` is fast; each command imports its library.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(help="CT/MRI study classification: synthesize, preprocess (N4), train, evaluate.",
                  no_args_is_help=True)

_CONFIG_HELP = "Config YAML (default: configs/medical3d/default.yaml)."
_SET_HELP = "Override a config key, e.g. --set train.epochs=5 (repeatable)."


class Modality(StrEnum):
    mri = "mri"
    ct = "ct"


class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"
    all = "all"


def _console():
    from rich.console import Console

    return Console()


@app.command(epilog="Example: vsuite med synth data/mri --cases 40 --modality mri --seed 0")
def synth(
    out: Path = typer.Argument(..., help="Output folder (studies/, manifest.csv, cases.jsonl)."),
    cases: int = typer.Option(40, "--cases", min=2, help="Number of studies (half with a lesion)."),
    modality: Modality = typer.Option(Modality.mri, "--modality", help="Imaging modality of the phantoms."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same studies."),
    size: int = typer.Option(None, "--size", min=16, help="Voxels per axis (e.g. 32 for tests); default: "
                             "clinical spacings."),
    lesion_min: float = typer.Option(2.0, "--lesion-min", min=0.5, help="Smallest lesion radius, mm."),
    lesion_max: float = typer.Option(6.0, "--lesion-max", min=0.5, help="Largest lesion radius, mm."),
) -> None:
    """Write phantom studies (head/torso, tissue layers, half with a small lesion) and manifest.csv."""
    from rich.table import Table

    from common.errors import InputError
    from medical3d.workflows import synth_studies

    if lesion_max < lesion_min:
        raise InputError(f"--lesion-max {lesion_max} < --lesion-min {lesion_min}")
    console = _console()
    manifest, counts = synth_studies(out, cases, modality.value, seed, size=size,
                                     lesion_radius_mm=(lesion_min, lesion_max), console=console)
    table = Table(title=f"{cases} {modality.value} studies")
    table.add_column("label / format")
    table.add_column("studies", justify="right")
    for k in sorted(counts):
        table.add_row(k, str(counts[k]))
    console.print(table)
    console.print(f"manifest: [bold]{manifest}[/]")


@app.command(epilog="Example: vsuite med preprocess data/mri/studies/case_0001.nii.gz data/dicom_folder --out prep")
def preprocess(
    inputs: list[str] = typer.Argument(..., help="Study files, DICOM series folders or folders to search."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    series_uid: str = typer.Option(None, "--series-uid", help="SeriesInstanceUID to read from DICOM folders."),
) -> None:
    """Preprocess studies: writes <study>_preprocessed.nii.gz, <study>_bias.nii.gz (MRI) and <study>_qa.json."""
    from rich.table import Table

    from medical3d.config import load_medical_config
    from medical3d.workflows import preprocess_studies

    console = _console()
    cfg = load_medical_config(config, set_)
    rows = preprocess_studies(inputs, out, cfg.preprocess, series_uid=series_uid, threads=cfg.runtime.threads,
                              console=console)
    table = Table(title=f"preprocessed -> {out}")
    for col in ("study", "status", "orientation", "N4 s", "CV before", "CV after", "bias range"):
        table.add_column(col)
    for r in rows:
        if r["status"] != "ok":
            table.add_row(r["study"], "[red]error[/]", r["reason"], "", "", "", "")
            continue
        bias = f"{r['bias_min']}-{r['bias_max']}" if r.get("bias_min") is not None else "-"
        table.add_row(r["study"], "ok", str(r["orientation"]), str(r.get("n4_seconds") or "-"),
                      f"{r['cv_before']:.4f}", f"{r['cv_after']:.4f}", bias)
    console.print(table)


@app.command(epilog="Example: vsuite med train data/mri/manifest.csv --out runs/med --max-minutes 10 "
                    "--set train.epochs=20")
def train(
    manifest: Path = typer.Argument(..., help="manifest.csv (path,label[,split]) or a folder per class."),
    config: Path = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    out: Path = typer.Option(Path("runs/medical3d"), "--out", "-o", help="Run directory to write."),
    set_: list[str] = typer.Option([], "--set", help=_SET_HELP),
    weights: Path = typer.Option(None, "--weights", help="Local pretrained weights (.pt state dict)."),
    max_minutes: float = typer.Option(None, "--max-minutes", min=0.05, help="Training wall-time cap."),
) -> None:
    """Train a 3D CNN on a manifest; writes run.json, model.onnx, checkpoints/, metrics.json and plots/."""
    from medical3d.config import load_medical_config
    from medical3d.train import train as run_train
    from medical3d.workflows import print_metrics

    console = _console()
    cfg = load_medical_config(config, set_)
    result = run_train(manifest, cfg, out, weights=weights, max_minutes=max_minutes, console=console)
    print_metrics(console, result.metrics["val"], "validation")
    console.print(f"{result.stopped_reason}; best epoch {result.best_epoch}; threshold "
                  f"{result.decision.threshold:.3f}, temperature {result.decision.temperature:.3f}")
    console.print(f"run: [bold]{out}[/] (run.json, model.onnx, checkpoints/, metrics.json, plots/)")


@app.command(name="eval", epilog="Example: vsuite med eval runs/med data/mri/manifest.csv --split test")
def eval_(
    run: Path = typer.Argument(..., help="Run directory written by `vsuite med train`."),
    manifest: Path = typer.Argument(..., help="manifest.csv or folder per class."),
    split: Split = typer.Option(Split.test, "--split", help="Manifest split to evaluate (all: every study)."),
    gradcam: int = typer.Option(None, "--gradcam", min=0, help="Grad-CAM volumes to write (default: config)."),
) -> None:
    """AUROC, accuracy, sensitivity/specificity at the run's threshold, confusion matrix, ECE, Grad-CAM."""
    from medical3d.evaluate import evaluate_run
    from medical3d.workflows import print_metrics

    console = _console()
    metrics = evaluate_run(run, manifest, split.value, console=console, gradcam_limit=gradcam)
    print_metrics(console, metrics, split.value)
    console.print(f"metrics, predictions, plots and Grad-CAM: [bold]{metrics['out_dir']}[/]")
