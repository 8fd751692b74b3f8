"""``vsuite demo`` for industrial_qc: synthesize parts, train both stages on a short budget, inspect a folder of
held-out parts like the line would, print the verdict table and the eval metrics; then the same, briefly, for
image-level data (one labelled part per image): a part classifier whose FAIL / REVIEW parts come with heatmaps."""

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


def part_demo_plan(minutes: float) -> dict:
    """The image-level part of the demo: a short side show of the detection demo's ``minutes`` (0.5 to 1.5 min
    of training), small parts with clearly visible defects so a from-scratch ResNet learns something in it."""
    return {"images": 400, "size": 64, "minutes": round(min(1.5, max(0.5, 0.3 * minutes)), 2),
            "contrast": (0.3, 0.5)}


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _metrics_table(title: str, head: dict, verdicts: dict) -> Table:
    t2 = Table(title=title)
    t2.add_column("metric")
    t2.add_column("value", justify="right")
    for k, v in head.items():
        t2.add_row(k, "-" if v is None else f"{v:.4f}")
    t2.add_row("verdicts", " ".join(f"{k} {v}" for k, v in verdicts.items()))
    return t2


def run_demo(workdir: Path, *, console: Console, minutes: float) -> dict:
    """The detection demo, then the image-level one (``run_part_demo``, which prints its own app command); the
    detection run's results are what ``vsuite demo`` offers to open in the app."""
    out = run_detection_demo(Path(workdir), console=console, minutes=minutes)
    out["parts"] = run_part_demo(Path(workdir), console=console, minutes=minutes)
    return out


def run_detection_demo(workdir: Path, *, console: Console, minutes: float) -> dict:
    from industrial_qc.config import load_qc_config
    from industrial_qc.data import load_dataset
    from industrial_qc.evaluate import evaluate_run, summary
    from industrial_qc.line import InspectOptions, run_line
    from industrial_qc.synth import SynthConfig, synthesize_shown
    from industrial_qc.train import train_run

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
    line_in = _fresh(workdir / "line_in")
    truth = {}
    for s in load_dataset(rep.data_yaml, ("test",), required=()).split("test"):
        shutil.copy2(s.image, line_in / s.image.name)
        truth[s.image.name] = "defective" if s.defective else "good"
    line_out = workdir / "line_out"
    if line_out.exists():
        shutil.rmtree(line_out)
    line = run_line(run_dir, str(line_in), line_out, InspectOptions(annotate=True), console=console)
    console.print(_detection_verdicts(line_out, truth))

    console.print("[bold]4/4 eval[/] on the test split")
    metrics = evaluate_run(run_dir, rep.data_yaml, "test", console=console)
    head = summary(metrics)
    console.print(_metrics_table("eval (test split)", head, metrics["pipeline"]["parts"]["verdicts"]))
    return {"run_dir": str(run_dir), "results": str(line_out / "results.jsonl"), "metrics": head,
            "line": line, "data_yaml": str(rep.data_yaml), "data_roots": [str(line_in)]}


def _detection_verdicts(line_out: Path, truth: dict[str, str]) -> Table:
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
    return table


# ------------------------------------------------------------------------------------------------ parts
def run_part_demo(workdir: Path, *, console: Console, minutes: float) -> dict:
    """Image-level parts in class folders -> a part classifier -> the line on held-out parts (heatmaps) -> eval."""
    from industrial_qc.config import load_qc_config
    from industrial_qc.line import InspectOptions, run_line
    from industrial_qc.part_eval import evaluate_part_run, part_summary
    from industrial_qc.part_train import train_part_run
    from industrial_qc.synth import SynthConfig
    from industrial_qc.synth_parts import synthesize_parts_shown

    plan = part_demo_plan(minutes)
    console.rule("[bold]industrial_qc demo: image-level parts (a part classifier)")
    console.print(f"[bold]parts 1/4 synthesize[/] {plan['images']} labelled parts at {plan['size']} px (class folders)")
    synth = SynthConfig(images=plan["images"], size=plan["size"], seed=0, contrast=plan["contrast"],
                        image_format="png")
    rep = synthesize_parts_shown(workdir / "parts_data", synth, "folders", True, console)

    console.print(f"[bold]parts 2/4 train[/] a part classifier within {plan['minutes']:g} min")
    cfg = load_qc_config(None, [f"max_minutes={plan['minutes']}", f"part.image_size={plan['size']}",
                                "part.normalize=per_image"])
    run_dir = workdir / "runs" / "qc-parts-demo"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    train_part_run(rep.data, cfg, run_dir, console=console)

    console.print("[bold]parts 3/4 inspect[/] a folder of held-out parts (heatmaps for FAIL / REVIEW)")
    line_in = _fresh(workdir / "parts_line_in")
    truth = {}
    for path in sorted((rep.data / "test").glob("*/*.png")):
        shutil.copy2(path, line_in / path.name)
        truth[path.name] = path.parent.name
    line_out = workdir / "parts_line_out"
    if line_out.exists():
        shutil.rmtree(line_out)
    line = run_line(run_dir, str(line_in), line_out, InspectOptions(), console=console)
    console.print(_part_verdicts(line_out, truth))

    console.print("[bold]parts 4/4 eval[/] on the test split")
    metrics = evaluate_part_run(run_dir, rep.data, "test", console=console)
    head = part_summary(metrics)
    console.print(_metrics_table("part classifier eval (test split)", head, metrics["parts"]["verdicts"]))
    results = line_out / "results.jsonl"
    console.print(f"review it: vsuite app qc {run_dir} --results {results} --data-root {line_in}", soft_wrap=True,
                  highlight=False)
    return {"run_dir": str(run_dir), "results": str(results), "metrics": head, "line": line, "data": str(rep.data),
            "data_roots": [str(line_in)]}


def _part_verdicts(line_out: Path, truth: dict[str, str]) -> Table:
    from common.results import read_jsonl

    records = read_jsonl(line_out / "results.jsonl")
    table = Table(title=f"verdicts ({len(records)} held-out parts; first 15)")
    for col in ("file", "truth", "verdict", "defect score", "class", "heatmap"):
        table.add_column(col)
    for r in records[:15]:
        name = Path(r["file"]).name
        heatmap = Path(r["heatmap"]).relative_to(line_out).as_posix() if r.get("heatmap") else "-"
        table.add_row(name, truth.get(name, "?"), r.get("verdict", "ERROR"), f"{r.get('max_defect_score', 0):.3f}",
                      f"{r.get('class', '-')} {r.get('class_prob', 0):.2f}", heatmap)
    return table
