"""``vsuite demo`` for industrial_qc: synthesize parts, train both stages on a short budget, inspect a folder of
held-out parts like the line would, print the verdict table and the eval metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table


def demo_plan(minutes: float) -> dict:
    """Data size and image side that a ``minutes`` budget can train on 2 CPU cores."""
    if minutes < 6:
        return {"images": 160, "size": 160}
    if minutes < 20:
        return {"images": 350, "size": 256}
    return {"images": 700, "size": 320}


def run_demo(workdir: Path, *, console: Console, minutes: float) -> dict:
    from industrial_qc.config import load_qc_config
    from industrial_qc.data import load_dataset
    from industrial_qc.evaluate import evaluate_run, summary
    from industrial_qc.line import InspectOptions, run_line
    from industrial_qc.synth import SynthConfig, synthesize_shown
    from industrial_qc.train import train_run

    workdir = Path(workdir)
    plan = demo_plan(minutes)
    console.print(f"[bold]1/4 synthesize[/] {plan['images']} parts at {plan['size']} px")
    rep = synthesize_shown(workdir / "data", SynthConfig(images=plan["images"], size=plan["size"], seed=0), console)

    console.print(f"[bold]2/4 train[/] both stages within {minutes:g} min")
    cfg = load_qc_config(None, [f"max_minutes={minutes}", f"detector.imgsz={plan['size']}"])
    run_dir = workdir / "runs" / "qc-demo"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train_run(rep.data_yaml, cfg, run_dir, console=console)

    console.print("[bold]3/4 inspect[/] a folder of held-out parts")
    line_in = workdir / "line_in"
    if line_in.exists():
        shutil.rmtree(line_in)
    line_in.mkdir(parents=True)
    test = load_dataset(rep.data_yaml, ("test",), required=()).split("test")
    truth = {}
    for s in test:
        shutil.copy2(s.image, line_in / s.image.name)
        truth[s.image.name] = "defective" if s.defective else "good"
    line_out = workdir / "line_out"
    if line_out.exists():
        shutil.rmtree(line_out)
    line = run_line(run_dir, str(line_in), line_out, InspectOptions(annotate=True), console=console)

    from common.results import read_jsonl

    records = read_jsonl(line_out / "results.jsonl")
    table = Table(title=f"verdicts ({len(records)} held-out parts; first 15)")
    for col in ("file", "truth", "verdict", "max score", "defects"):
        table.add_column(col)
    for r in records[:15]:
        name = Path(r["file"]).name
        found = r.get("defects", [])
        defects = ", ".join(f"{d['class']} {d.get('defect_score', d['defect_prob']):.2f}" for d in found[:3]) or "-"
        defects += f" (+{len(found) - 3})" if len(found) > 3 else ""
        top = r.get("max_defect_score", r.get("max_defect_prob", 0))
        table.add_row(name, truth.get(name, "?"), r.get("verdict", "ERROR"), f"{top:.3f}", defects)
    console.print(table)

    console.print("[bold]4/4 eval[/] on the test split")
    metrics = evaluate_run(run_dir, rep.data_yaml, "test", console=console)
    head = summary(metrics)
    t2 = Table(title="eval (test split)")
    t2.add_column("metric")
    t2.add_column("value", justify="right")
    for k, v in head.items():
        t2.add_row(k, "-" if v is None else f"{v:.4f}")
    t2.add_row("verdicts", " ".join(f"{k} {v}" for k, v in metrics["pipeline"]["parts"]["verdicts"].items()))
    console.print(t2)
    return {"run_dir": str(run_dir), "results": str(line_out / "results.jsonl"), "metrics": head,
            "line": line, "data_yaml": str(rep.data_yaml), "data_roots": [str(line_in)]}
