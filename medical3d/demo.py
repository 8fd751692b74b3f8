"""``vsuite demo`` part for medical3d: synthesize MRI studies, train briefly, evaluate, score held-out studies."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from medical3d.config import DEMO_CONFIG

DEMO_CASES = 40
# Demo volumes are 64^3 at 3 mm; lesions a little larger than the benchmark's so a few CPU minutes suffice.
DEMO_LESION_MM = (5.0, 8.0)


def run_demo(workdir: Path, *, console: Console | None = None, minutes: float = 3.0) -> dict:
    """Synthesize -> train (``minutes`` budget) -> eval on the test split -> score the test studies (ONNX).

    Returns {"run_dir", "results", "metrics"}; everything is written under ``workdir``.
    """
    from common.results import abs_path
    from common.rundir import read_run_json
    from medical3d.config import load_medical_config
    from medical3d.evaluate import evaluate_run
    from medical3d.score import score
    from medical3d.synth import synth_dataset
    from medical3d.train import load_split_cases, train
    from medical3d.workflows import print_metrics

    console = console or Console()
    workdir = Path(workdir)
    data = workdir / "data"
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        console.print(f"synthesizing {DEMO_CASES} MRI studies -> {data}")
        synth_dataset(data, DEMO_CASES, "mri", seed=0, size=64, lesion_radius_mm=DEMO_LESION_MM)
    cfg = load_medical_config(DEMO_CONFIG, [f"data.cache_dir={workdir / 'cache'}"])
    run_dir = workdir / "run"
    result = train(manifest, cfg, run_dir, max_minutes=minutes, console=console)
    console.print(f"trained: {result.stopped_reason}, best epoch {result.best_epoch}")
    metrics = evaluate_run(run_dir, manifest, "test", console=console)
    print_metrics(console, metrics, "test")

    cases, _ = load_split_cases(manifest, cfg)
    test_studies = [str(c.path) for c in cases if c.split == "test"]
    results = workdir / "scores.csv"
    records = score(run_dir, test_studies, results, console=console, run=read_run_json(run_dir))
    truth = {abs_path(c.path): c.label for c in cases}  # records name their study by its absolute path
    table = Table(title="held-out studies scored from model.onnx")
    for col in ("study", "true", "verdict", "p(lesion)", "format", "orientation", "N4 s"):
        table.add_column(col)
    for r in records:
        if r["status"] != "ok":
            table.add_row(str(r.get("study")), truth.get(r["source"], "?"), "[red]error[/]", r["reason"], "", "", "")
            continue
        table.add_row(r["study"], truth.get(r["source"], "?"), r["verdict"], f"{r['score']:.3f}", str(r["format"]),
                      str(r["orientation"]), str(r["n4_seconds"]))
    console.print(table)
    console.print(f"run: [bold]{run_dir}[/]  scores: [bold]{results}[/]")
    return {"run_dir": str(run_dir), "results": str(results), "metrics": metrics}
