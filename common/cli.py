"""``vsuite``: one CLI for every job of both verticals.

This module knows no vertical. Command groups (``qc``, ``med``, ``app``), batch scorers and demos are
plug-ins found through entry points declared in pyproject.toml:

    vsuite.groups   name -> typer.Typer         (vsuite qc ..., vsuite med ..., vsuite app ...)
    vsuite.scorers  vertical -> score(run_dir, inputs, out, *, console, run, options) -> list[dict]
                    (options: common.scoring.ScoreOptions, the engine and --resume)
    vsuite.demos    vertical -> run_demo(workdir, *, console, minutes) -> dict

``vsuite weights`` (common.weights) fills and lists the local caches of pretrained weights.
"""

import sys
import time
from importlib import metadata
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common import __version__
from common.errors import InputError
from common.results import display_text
from common.scoring import DEFAULT_BATCH_SIZE, ENGINES

console = Console()
err_console = Console(stderr=True)

GROUP_HELP = {
    "qc": "Industrial defect inspection: synth, train, eval, inspect.",
    "med": "CT/MRI study classification: synth, preprocess, train, eval.",
    "app": "Streamlit review apps for operators and radiologists.",
}
GROUP_ORDER = ("qc", "med", "app")


def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def _not_built(name: str, reason: str) -> typer.Typer:
    sub = typer.Typer(help=f"{GROUP_HELP.get(name, name)} (not built yet)", invoke_without_command=True)

    @sub.callback()
    def _missing() -> None:
        err_console.print(f"[yellow]vsuite {name}: not built yet[/] ({reason})")
        raise typer.Exit(2)

    return sub


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"vsuite (vision-suite) {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="vsuite",
    help="vision-suite: industrial defect QC and CT/MRI study classification, one CLI.\n\n"
    "Example: vsuite demo   (synthesize data, train both verticals briefly, score, print results)",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """vision-suite: industrial defect QC and CT/MRI study classification, one CLI."""


def _register_groups() -> None:
    eps = _entry_points("vsuite.groups")
    for name in sorted(eps, key=lambda n: (GROUP_ORDER.index(n) if n in GROUP_ORDER else 99, n)):
        try:
            sub = eps[name].load()
        except Exception as exc:  # a vertical that fails to import must not take the whole CLI down
            sub = _not_built(name, f"{type(exc).__name__}: {exc}")
        app.add_typer(sub, name=name, help=GROUP_HELP.get(name))
    for name in GROUP_ORDER:
        if name not in eps:
            app.add_typer(_not_built(name, "no plug-in installed"), name=name)


@app.command(epilog="Example: vsuite score runs/qc-demo parts/ 'line2/*.png' --out scores.parquet\n\n"
             "On a Ray cluster: vsuite score runs/qc-demo --inputs-from day.txt --out scores/ --engine ray "
             "--address HEAD:6379 --resume")
def score(
    run: Path = typer.Argument(..., help="Run directory (holds run.json and the ONNX models)."),
    inputs: list[str] | None = typer.Argument(None, help="Files, folders or globs to score (and/or --inputs-from)."),
    out: str = typer.Option(..., "--out", "-o", help="Output table: .csv, .parquet or .jsonl, or DIR/ for a "
                            "partitioned Parquet dataset (part-00000.parquet, ...)."),
    inputs_from: Path | None = typer.Option(None, "--inputs-from", help="A file listing inputs, one per line "
                                            "(blank lines and # comments skipped)."),
    engine: str = typer.Option("local", "--engine", help="local (one process) or ray (Ray Data, any Ray cluster)."),
    address: str | None = typer.Option(None, "--address", help="Ray: an existing cluster (HEAD:6379); "
                                       "default: start a local one."),
    workers: int | None = typer.Option(None, "--workers", help="Ray: scoring actors, each holding the loaded run "
                                       "(default: as many as the CPUs hold)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Ray: inputs per block and batch "
                                          f"(default {DEFAULT_BATCH_SIZE})."),
    cpus_per_worker: float | None = typer.Option(None, "--cpus-per-worker", help="Ray: CPUs per scoring actor "
                                                 "(default 1)."),
    resume: bool = typer.Option(False, "--resume", help="Keep OUT and score only the inputs it has no record "
                                "for (a killed job continues where it stopped)."),
) -> None:
    """Batch-score files with a trained run; the run's vertical (from run.json) picks the scorer."""
    from common.rundir import read_run_json
    from common.scoring import ScoreOptions, read_inputs_file, resolve_out

    out_path, dataset = resolve_out(out)
    items = list(inputs or [])
    if inputs_from is not None:
        items += read_inputs_file(inputs_from)
    if not items:
        raise InputError("no inputs: give files, folders or globs, or --inputs-from FILE")
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: must be one of {', '.join(ENGINES)}")
    if engine != "ray":
        given = [name for name, value in (("--address", address), ("--workers", workers),
                                          ("--batch-size", batch_size), ("--cpus-per-worker", cpus_per_worker))
                 if value is not None]
        if given:
            raise InputError(f"{', '.join(given)}: only with --engine ray")
    options = ScoreOptions(engine=engine, address=address, workers=workers,  # type: ignore[arg-type]
                           batch_size=batch_size or DEFAULT_BATCH_SIZE, cpus_per_worker=cpus_per_worker or 1.0,
                           resume=resume, dataset=dataset)
    run_info = read_run_json(run)
    vertical = run_info["vertical"]
    scorers = _entry_points("vsuite.scorers")
    if vertical not in scorers:
        raise InputError(f"{run}/run.json: no scorer installed for vertical {vertical!r}")
    scorer = scorers[vertical].load()
    t0 = time.perf_counter()
    records = scorer(run, items, out_path, console=console, run=run_info, options=options)
    print_score_summary(records, out_path, time.perf_counter() - t0)


def print_score_summary(records: list[dict], out: Path, seconds: float) -> None:
    ok = [r for r in records if r.get("status") == "ok"]
    errors = [r for r in records if r.get("status") != "ok"]
    verdicts: dict[str, int] = {}
    for r in ok:
        v = str(r.get("verdict"))
        verdicts[v] = verdicts.get(v, 0) + 1
    table = Table(title="score summary")
    table.add_column("what")
    table.add_column("count", justify="right")
    for v, n in sorted(verdicts.items()):
        table.add_row(f"verdict {v}", str(n))
    table.add_row("errors", str(len(errors)))
    table.add_row("total", str(len(records)))
    console.print(table)
    for r in errors[:10]:
        source, reason = display_text(r.get("source")), display_text(r.get("reason"))
        # Reasons from InputError already start with the file they are about.
        text = reason if reason.startswith(source) else f"{source}: {reason}"
        console.print(f"[red]error[/] {escape(text)}", highlight=False)
    rate = len(records) / seconds if seconds > 0 else 0.0
    console.print(f"{len(records)} inputs in {seconds:.1f} s ({rate:.1f}/s) -> [bold]{escape(display_text(out))}[/]")


@app.command(epilog="Example: vsuite demo --out demo_out --minutes 3")
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Work folder for data, runs and results."),
    minutes: float = typer.Option(3.0, "--minutes", min=0.2, help="Training budget per vertical, in minutes."),
    only: list[str] = typer.Option(None, "--only", help="Run only these verticals (industrial_qc, medical3d)."),
) -> None:
    """The main job on generated data: synthesize, train briefly, score held-out inputs, print the results."""
    demos = _entry_points("vsuite.demos")
    chosen = [v for v in ("industrial_qc", "medical3d") if v in demos and (not only or v in only)]
    if not chosen:
        raise InputError(f"no demo to run (installed: {', '.join(demos) or 'none'}; --only {only})")
    outcomes = {}
    for vertical in chosen:
        console.rule(f"[bold]{vertical} demo")
        outcomes[vertical] = demos[vertical].load()(out / vertical, console=console, minutes=minutes)
    console.rule("[bold]review apps")
    app_cmd = {"industrial_qc": "qc", "medical3d": "med"}
    for vertical, result in outcomes.items():
        if result and result.get("run_dir") and result.get("results"):
            # soft_wrap: a command cut across lines cannot be pasted back into a shell.
            roots = "".join(f" --data-root {r}" for r in result.get("data_roots") or [])  # images outside results
            console.print(f"vsuite app {app_cmd[vertical]} {result['run_dir']} --results {result['results']}{roots}",
                          soft_wrap=True, highlight=False)


weights_app = typer.Typer(help="Pretrained weights in the local caches: list them, pull them on a connected machine.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("pull", epilog="Example: vsuite weights pull resnet18 yolov5nu.pt")
def weights_pull(
    names: list[str] = typer.Argument(..., help="resnet18, resnet34, resnet50 (ImageNet) or an Ultralytics .pt."),
    mirror: str = typer.Option(None, "--mirror", help="Base URL (http or file://) serving the same file names."),
) -> None:
    """Download weights into the caches the runs read (TORCH_HOME, Ultralytics' weights dir), checked first."""
    from common.weights import pull

    for name in names:
        entry, what = pull(name, mirror)
        console.print(f"{escape(name)}: {escape(what)} -> [bold]{escape(str(entry.path))}[/] ({entry.check}: ok)",
                      soft_wrap=True, highlight=False)


@weights_app.command("list")
def weights_list() -> None:
    """Which pretrained weights are cached, and where each one is expected."""
    from common.weights import cache_listing

    table = Table(title="pretrained weights (local caches only)")
    for col in ("name", "source", "cached", "path"):
        table.add_column(col, overflow="fold")
    for row in cache_listing():
        cached = f"yes ({row['mb']} MB)" if row["cached"] else f"no: vsuite weights pull {row['name']}"
        table.add_row(row["name"], row["source"], cached, escape(row["path"]))
    console.print(table)


def main() -> None:
    """Console-script entry: registers the plug-ins and turns InputError into a one-line message, exit 2."""
    _register_groups()
    try:
        app()  # standalone: click prints usage errors and exits by itself
    except InputError as exc:
        err_console.print(f"[bold red]error:[/] {escape(display_text(exc))}", highlight=False)
        sys.exit(2)

if __name__ == "__main__":
    main()
