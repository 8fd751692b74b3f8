"""``vsuite qc``: synth, train, eval, inspect. Thin commands: parse, load config, call one library function,
print a table. Heavy imports (torch, ultralytics, onnxruntime) happen inside the commands."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(help="Industrial defect inspection: synth, train, eval, inspect.", no_args_is_help=True,
                  rich_markup_mode="rich", pretty_exceptions_enable=False)


class ImageFormat(StrEnum):
    """``synth --format``: how the synthetic parts are written."""

    jpg = "jpg"
    png = "png"


class Layout(StrEnum):
    """``synth --layout``: box-labelled detection data, or image-level parts in class folders or a CSV manifest."""

    yolo = "yolo"
    folders = "folders"
    csv = "csv"


class Split(StrEnum):
    """``eval --split``: the dataset split to evaluate on."""

    train = "train"
    val = "val"
    test = "test"


class SortMode(StrEnum):
    """``inspect --sort``: what happens to a judged part's file (``industrial_qc.hotfolder.sort_file``)."""

    none = "none"
    copy = "copy"
    move = "move"


def _console():
    from rich.console import Console

    return Console()


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


@app.command(epilog="Example: vsuite qc synth data/qc --images 700 --size 320 --seed 0")
def synth(
    out: Path = typer.Argument(..., help="Output folder (gets data.yaml, images/, labels/)."),
    images: int = typer.Option(700, "--images", min=3, help="Total images over train/val/test."),
    size: int = typer.Option(320, "--size", min=32, help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same dataset."),
    val_frac: float = typer.Option(1 / 7, "--val-frac", help="Share of images in val."),
    test_frac: float = typer.Option(2 / 7, "--test-frac", help="Share of images in test (0 = no test split)."),
    image_format: ImageFormat = typer.Option(ImageFormat.jpg, "--format", help="Image file format."),
    axis_scratches: float = typer.Option(0.3, "--axis-scratches", min=0.0, max=1.0,
                                         help="Share of scratches along an image axis (machining marks)."),
    layout: Layout = typer.Option(Layout.yolo, "--layout",
                                  help="yolo: data.yaml + box labels; folders: OUT/{split}/{class}/*; csv: "
                                       "OUT/images/* + OUT/labels.csv (one part per image, labelled by its defect)."),
    splits: bool = typer.Option(True, "--splits/--no-splits",
                                help="folders/csv: write train/val/test (without: `qc train` draws them)."),
) -> None:
    """Write a synthetic defect dataset: textured parts with scratches, pits, stains and cracks, box-labelled
    (yolo) or one labelled part per image (folders, csv)."""
    from rich.table import Table

    from common.errors import InputError
    from industrial_qc.synth import SynthConfig, synthesize_shown

    console = _console()
    cfg = SynthConfig(images=images, size=size, seed=seed, val_frac=val_frac, test_frac=test_frac,
                      image_format=image_format.value, axis_scratches=axis_scratches)  # type: ignore[arg-type]
    try:
        from industrial_qc.synth import split_counts

        split_counts(images, val_frac, test_frac)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if layout != Layout.yolo:
        _synth_parts(out, cfg, layout.value, splits, console)
        return
    rep = synthesize_shown(out, cfg, console)
    table = Table(title=f"synthetic parts ({size} px, seed {seed})")
    for col in ("split", "images", "good parts"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, n in rep.counts.items():
        table.add_row(split, str(n), str(rep.good[split]))
    console.print(table)
    console.print("defects: " + ", ".join(f"{k} {v}" for k, v in rep.defects.items()))
    console.print(f"-> [bold]{rep.data_yaml}[/]")


def _synth_parts(out: Path, cfg, layout: str, splits: bool, console) -> None:
    """``synth --layout folders|csv``: image-level parts, with a table of images per split and class."""
    from rich.table import Table

    from industrial_qc.synth_parts import synthesize_parts_shown

    rep = synthesize_parts_shown(out, cfg, layout, splits, console)  # type: ignore[arg-type]
    classes = list(next(iter(rep.counts.values())))
    table = Table(title=f"synthetic parts, one per image ({cfg.size} px, seed {cfg.seed})")
    for col in ("split", *classes):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, per_class in rep.counts.items():
        table.add_row(split, *(str(per_class[c]) for c in classes))
    console.print(table)
    console.print(f"-> [bold]{rep.data}[/] (vsuite qc train {rep.data})")


@app.command(epilog="Example: vsuite qc train data/qc/data.yaml --out runs/qc1 --max-minutes 20 "
                    "--set classifier.arch=resnet50;  vsuite qc train data/parts --out runs/parts1 --max-minutes 30")
def train(
    data: Path = typer.Argument(..., help="Ultralytics data.yaml (detection); or image-level parts: a folder with "
                                          "one sub-folder per class (optionally under train/ val/ test/) or a CSV "
                                          "manifest path,label[,split]."),
    config: Path = typer.Option(None, "--config", help="Config YAML [default: configs/industrial_qc/default.yaml]."),
    out: Path = typer.Option(None, "--out", help="Run directory [default: runs/qc-<time>]."),
    overrides: list[str] = typer.Option(None, "--set", help="Override a config key, e.g. detector.epochs=50."),
    max_minutes: float = typer.Option(None, "--max-minutes", min=0.1, help="Wall-time cap for the whole training."),
    detector_weights: Path = typer.Option(None, "--detector-weights", help="Local YOLO .pt to fine-tune from."),
) -> None:
    """Detection data: train detector (YOLOv5) and crop classifier (ResNet); image-level data: a part classifier
    (ResNet). Then choose the verdict thresholds and write the run directory."""
    import time

    from rich.table import Table

    from industrial_qc.config import load_qc_config
    from industrial_qc.train import train_qc

    console = _console()
    ov = list(overrides or [])
    if max_minutes is not None:
        ov.append(f"max_minutes={max_minutes}")
    cfg = load_qc_config(config, ov)
    out = out or Path("runs") / time.strftime("qc-%Y%m%d-%H%M%S")
    outcome = train_qc(data, cfg, out, detector_weights=detector_weights, console=console)
    if outcome is None:  # a torchrun rank other than 0: rank 0 writes the run and reports
        return
    part = outcome.run.get("mode") == "part"
    table = Table(title="training summary (val)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in _part_rows(outcome.metrics) if part else _detection_rows(outcome.metrics):
        table.add_row(k, _fmt(v))
    console.print(table)
    if part:
        models = ", ".join(dict.fromkeys(outcome.run["models"].values()))
        console.print(f"run -> [bold]{out}[/] (run.json, {models}, metrics.json, splits.csv, plots/)")
        return
    line = outcome.metrics["classifier"]["line_classifier"]
    console.print(f"run -> [bold]{out}[/] (run.json, detector.onnx, classifier.onnx"
                  + (f", {line}" if line != "classifier.onnx" else "") + ", metrics.json, plots/)")


def _detection_rows(m: dict) -> list[tuple[str, object]]:
    return [
        ("detector mAP50", m["detector"]["mAP50"]), ("detector recall", m["detector"]["recall"]),
        ("detector epochs", m["detector"]["epochs"]), ("classifier accuracy", m["classifier"]["accuracy"]),
        ("classifier epochs", m["classifier"]["epochs"]), ("temperature", m["classifier"]["temperature"]),
        ("fail threshold", m["thresholds"]["fail"]), ("review threshold", m["thresholds"]["review"]),
        ("escape rate", m["val_pipeline"]["parts"]["escape_rate"]),
        ("false-reject rate", m["val_pipeline"]["parts"]["false_reject_rate"]),
        ("line classifier", m["classifier"]["line_classifier"]),
        ("minutes", m["minutes_total"]),
    ]


def _part_rows(m: dict) -> list[tuple[str, object]]:
    from industrial_qc.part_train import part_summary_rows

    return part_summary_rows(m)


@app.command("eval", epilog="Example: vsuite qc eval runs/qc1 data/qc/data.yaml --split test")
def eval_cmd(
    run: Path = typer.Argument(..., help="Run directory written by `vsuite qc train`."),
    data_yaml: Path = typer.Argument(..., metavar="DATA",
                                     help="data.yaml of the dataset to evaluate on; for a part-classifier run its "
                                          "class-folder tree or CSV manifest (the run's split is drawn again)."),
    split: Split = typer.Option(Split.test, "--split", help="Dataset split."),
    no_map: bool = typer.Option(False, "--no-map", help="Skip the detector mAP (Ultralytics validation)."),
) -> None:
    """Detector mAP, classifier accuracy on ground-truth crops, pipeline precision/recall, escape and
    false-reject rates (part runs: accuracy, AUROC, per-class, escape, false-reject and review rates, confusion
    matrix and ROC plots); printed and written to RUN/metrics.json."""
    from rich.table import Table

    from industrial_qc.evaluate import evaluate_run

    console = _console()
    m = evaluate_run(run, data_yaml, split.value, console=console, detector_map=not no_map)
    if m.get("mode") == "part":
        _print_part_eval(console, m, run)
        return
    det = m.get("detector", {})
    parts = m["pipeline"]["parts"]
    cls = m["classifier"]
    table = Table(title=f"eval on {split} ({m['images']} images)")
    table.caption = ("pipe P/R: precision/recall of every reported defect (REVIEW level and above); "
                     "FAIL P/R: of those that fail the part on their own")
    for col in ("class", "det mAP50", "det mAP50-95", "cls recall", "pipe P", "pipe R", "FAIL P", "FAIL R"):
        table.add_column(col, justify="right" if col != "class" else "left")
    per_cls = cls.get("with_background", {}).get("per_class", {})
    pdef = m["pipeline"]["defects"]
    for name, pm in pdef["per_class"].items():
        dm = det.get("per_class", {}).get(name, {})
        fm = pdef.get("per_class_fail", {}).get(name, {})
        table.add_row(name, _fmt(dm.get("mAP50")), _fmt(dm.get("mAP50_95")),
                      _fmt(per_cls.get(name, {}).get("recall")), _fmt(pm["precision"]), _fmt(pm["recall"]),
                      _fmt(fm.get("precision")), _fmt(fm.get("recall")))
    table.add_row("[bold]all", _fmt(det.get("mAP50")), _fmt(det.get("mAP50_95")), _fmt(cls.get("accuracy_gt_crops")),
                  "", _fmt(pdef["localisation_recall"]), "", "")
    if "agnostic" in det:  # stage 1 finds, stage 2 names: how well defects are found, whatever the detector calls them
        table.add_row("any defect", _fmt(det["agnostic"]["mAP50"]), _fmt(det["agnostic"]["mAP50_95"]), "", "", "",
                      "", "")
    console.print(table)
    t2 = Table(title="parts")
    t2.add_column("metric")
    t2.add_column("value", justify="right")
    for k in ("parts", "defective_parts", "good_parts", "escape_rate", "false_reject_rate", "review_rate_defective",
              "review_rate_good"):
        t2.add_row(k, _fmt(parts[k]))
    t2.add_row("verdicts", " ".join(f"{k} {v}" for k, v in parts["verdicts"].items()))
    console.print(t2)
    if "classifier_fp32" in m:
        console.print(f"classifier on ground-truth crops: {_fmt(cls.get('accuracy_gt_crops'))} with the line's "
                      f"{cls.get('model')}, {_fmt(m['classifier_fp32'].get('accuracy_gt_crops'))} with classifier.onnx "
                      "(fp32)")
    console.print(f"-> [bold]{Path(run) / 'metrics.json'}[/] (eval.{split})")


def _print_part_eval(console, m: dict, run: Path) -> None:
    """The tables of a part run's eval (``industrial_qc.part_eval``)."""
    from rich.table import Table

    from industrial_qc.part_eval import part_summary

    cls = m["classification"]
    table = Table(title=f"eval on {m['split']} ({m['images']} images, {len(m['errors'])} unreadable)")
    for col in ("class", "precision", "recall", "F1", "images", "PASS", "REVIEW", "FAIL"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for name, pc in cls.get("per_class", {}).items():
        v = m["verdicts_by_class"][name]
        table.add_row(name, _fmt(pc["precision"]), _fmt(pc["recall"]), _fmt(pc["f1"]), str(pc["support"]),
                      str(v["PASS"]), str(v["REVIEW"]), str(v["FAIL"]))
    console.print(table)
    t2 = Table(title="parts")
    t2.add_column("metric")
    t2.add_column("value", justify="right")
    for k, v in part_summary(m).items():
        t2.add_row(k, _fmt(v))
    t2.add_row("verdicts", " ".join(f"{k} {v}" for k, v in m["parts"]["verdicts"].items()))
    console.print(t2)
    for e in m["errors"][:10]:
        console.print(f"[red]unreadable[/] {e}", highlight=False)
    console.print(f"-> [bold]{Path(run) / 'metrics.json'}[/] (eval.{m['split']}), plots: "
                  + ", ".join(Path(p).name for p in m["plots"]))


@app.command(epilog="Example: vsuite qc inspect runs/qc1 /line/incoming --watch --out /line/results --annotate")
def inspect(
    run: Path = typer.Argument(..., help="Run directory written by `vsuite qc train` (run.json, ONNX models)."),
    source: str = typer.Argument(..., help="Folder, glob ('parts/*.png'), video file or camera index (0)."),
    watch: bool = typer.Option(False, "--watch", help="Keep polling the folder/glob for new files."),
    out: Path = typer.Option(Path("inspect_out"), "--out", help="Output folder: results.jsonl, ledger.txt."),
    annotate: bool = typer.Option(False, "--annotate", help="Save annotated images of FAIL/REVIEW parts."),
    sort: SortMode = typer.Option(SortMode.none, "--sort",
                                  help="Copy or move files into OUT/{pass,fail,review,error} (none: leave them)."),
    poll: float = typer.Option(0.5, "--poll", min=0.01, help="Seconds between folder scans with --watch."),
    max_parts: int = typer.Option(None, "--max-parts", min=1, help="Stop after this many parts."),
    idle_exit: float = typer.Option(None, "--idle-exit", help="With --watch: stop after N s without new parts."),
    threads: int = typer.Option(None, "--threads", help="onnxruntime threads per model."),
    settle_seconds: float = typer.Option(1.0, "--settle-seconds", min=0.0,
                                         help="A file is taken once its size and mtime are unchanged this long."),
    error_grace: float = typer.Option(10.0, "--error-grace", min=0.0,
                                      help="With --watch: a fresh file that does not decode is retried until it has "
                                           "been unchanged this long (a copy that paused), then recorded as an error."),
    follow_links: bool = typer.Option(False, "--follow-links",
                                      help="Inspect the targets of symlinks (default: a symlink is an error record)."),
    max_pixels: int = typer.Option(None, "--max-pixels", min=1,
                                   help="Largest image, in pixels, read from its header before decoding "
                                        "[default: the run's input.max_pixels, 100 MP]."),
    publish: list[str] = typer.Option(None, "--publish",
                                      help="Send each part's result to mqtt://host:port/topic, "
                                           "opc.tcp://host:port/path[?station=NAME] or http(s)://url (repeatable; "
                                           "replaces line.publish). Delivered from the ledger, exactly once."),
    deadline_ms: float = typer.Option(None, "--deadline-ms", min=0.0,
                                      help="Publish a part as REVIEW (reason deadline) when it is not judged this many "
                                           "ms after it was taken; its late result is still recorded."),
    metrics_port: int = typer.Option(None, "--metrics-port", min=0, max=65535,
                                     help="Serve Prometheus /metrics and /healthz on this port."),
    metrics_host: str = typer.Option(None, "--metrics-host", help="Address for --metrics-port [default: 127.0.0.1]."),
    status_interval: float = typer.Option(None, "--status-interval", min=0.1,
                                          help="Seconds between MQTT <topic>/status messages [default: 5]."),
    publish_drain: float = typer.Option(None, "--publish-drain", min=0.0,
                                        help="Seconds to wait at exit for pending deliveries [default: 10]; the "
                                             "rest is sent after the next start."),
    config: Path = typer.Option(None, "--config", help="Config YAML for the line: section "
                                                       "[default: configs/industrial_qc/default.yaml]."),
    overrides: list[str] = typer.Option(None, "--set", help="Override a config key, e.g. line.deadline_ms=200."),
) -> None:
    """Line inspection: one fsync'd JSON line per part, exactly once across restarts; Ctrl-C stops cleanly.
    One line per output folder; files still being written (.part/.tmp names, or changing) wait until complete.
    A part-classifier run writes a heatmap of each FAIL / REVIEW part to OUT/heatmaps. Plant connections
    (--publish, --deadline-ms, --metrics-port): options given here win over the config's line: section."""
    from industrial_qc.config import load_qc_config
    from industrial_qc.line import InspectOptions, run_line

    line = load_qc_config(config, list(overrides or [])).line
    opts = InspectOptions(watch=watch, poll_interval=poll, annotate=annotate, sort=sort.value,  # type: ignore[arg-type]
                          max_parts=max_parts, idle_exit=idle_exit, threads=threads, settle=settle_seconds,
                          error_grace=error_grace, follow_links=follow_links, max_pixels=max_pixels,
                          publish=list(publish) if publish else list(line.publish),
                          deadline_ms=deadline_ms if deadline_ms is not None else line.deadline_ms,
                          metrics_port=metrics_port if metrics_port is not None else line.metrics_port,
                          metrics_host=metrics_host or line.metrics_host,
                          status_interval=status_interval or line.status_interval,
                          publish_drain=publish_drain if publish_drain is not None else line.publish_drain)
    console = _console()
    summary = run_line(run, source, out, opts, console=console)
    console.print(f"-> [bold]{summary['results']}[/]")


if __name__ == "__main__":  # `python -m industrial_qc.cli ...` (the tests run the line script this way)
    from common.errors import InputError

    try:
        app()
    except InputError as exc:
        import sys

        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
