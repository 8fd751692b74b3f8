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


def _family_choices() -> dict[str, str]:
    from medical3d.families import family_names

    return {name: name for name in family_names()}


FamilyName = StrEnum("FamilyName", _family_choices())


def _list_families(value: bool) -> None:
    """``--list-families``: print the family table and exit before OUT is required."""
    if not value:
        return
    from rich.table import Table

    from medical3d.families import describe_families

    columns = ("name", "modality", "anatomy", "lesion", "acquisition", "storage")
    table = Table(title="phantom families (vsuite med synth OUT --family NAME)", show_lines=True)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in describe_families():
        table.add_row(*(row[c] for c in columns))
    _console().print(table)
    raise typer.Exit()


@app.command(epilog="Example: vsuite med synth data/mri --cases 40 --modality mri --seed 0; "
                    "vsuite med synth data/brain --family brain_mixed; vsuite med synth --list-families")
def synth(
    out: Path = typer.Argument(..., help="Output folder (studies/, manifest.csv, cases.jsonl)."),
    cases: int = typer.Option(40, "--cases", min=2, help="Number of studies (half with a lesion)."),
    family: FamilyName = typer.Option("classic", "--family", help="Phantom family: the distribution of anatomy, "
                                      "lesions, acquisition and storage (see --list-families)."),
    list_families: bool = typer.Option(False, "--list-families", is_eager=True, callback=_list_families,
                                       help="Print the phantom families (anatomy, lesion, acquisition, storage) "
                                       "and exit."),
    modality: Modality = typer.Option(None, "--modality", help="Imaging modality of the phantoms (default: the "
                                      "family's; only classic renders both, default mri)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same studies."),
    size: int = typer.Option(None, "--size", min=16, help="Voxels per axis (e.g. 32 for tests); default: "
                             "clinical spacings."),
    lesion_min: float = typer.Option(None, "--lesion-min", min=0.5, help="Smallest lesion radius, mm (default: "
                                     "the family's; classic 2)."),
    lesion_max: float = typer.Option(None, "--lesion-max", min=0.5, help="Largest lesion radius, mm (default: "
                                     "the family's; classic 6)."),
) -> None:
    """Write phantom studies of one family (head/torso, tissue layers, half with a lesion) and manifest.csv."""
    from rich.table import Table

    from common.errors import InputError
    from medical3d.families import get_family, resolve_modality
    from medical3d.workflows import synth_studies

    fam = get_family(family.value)
    mod = resolve_modality(fam, modality.value if modality is not None else None)
    radius = None
    if lesion_min is not None or lesion_max is not None:
        radius = (fam.lesion.radius_mm[0] if lesion_min is None else lesion_min,
                  fam.lesion.radius_mm[1] if lesion_max is None else lesion_max)
        if radius[1] < radius[0]:
            raise InputError(f"--lesion-max {radius[1]} < --lesion-min {radius[0]} (family {fam.name}: "
                             f"{fam.lesion.radius_mm[0]}-{fam.lesion.radius_mm[1]} mm)")
    console = _console()
    manifest, counts = synth_studies(out, cases, mod, seed, size=size, lesion_radius_mm=radius, console=console,
                                     family=fam.name)
    table = Table(title=f"{cases} {fam.name} {mod} studies")
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
    from medical3d.workflows import print_metrics, print_operating_point, print_tradeoff

    console = _console()
    cfg = load_medical_config(config, set_)
    result = run_train(manifest, cfg, out, weights=weights, max_minutes=max_minutes, console=console)
    if result is None:  # a torchrun rank other than 0: rank 0 writes the run and reports
        return
    print_metrics(console, result.metrics["val"], "validation")
    op = result.metrics.get("operating_point")
    print_tradeoff(console, result.metrics.get("tradeoff"), "out-of-fold" if op and op["source"] == "kfold"
                   else "validation")
    print_operating_point(console, op)
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
    """AUROC, accuracy, sensitivity/specificity at the run's threshold, confusion matrix, ECE, the trade-off of
    sensitivity, specificity and REVIEW share per threshold, Grad-CAM."""
    from medical3d.evaluate import evaluate_run
    from medical3d.workflows import print_metrics, print_tradeoff

    console = _console()
    metrics = evaluate_run(run, manifest, split.value, console=console, gradcam_limit=gradcam)
    print_metrics(console, metrics, split.value)
    print_tradeoff(console, metrics.get("tradeoff"), split.value)
    console.print(f"metrics, predictions, plots and Grad-CAM: [bold]{metrics['out_dir']}[/]")
