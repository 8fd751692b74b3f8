"""``vsuite app qc|med RUN --results FILE [--db URL] [--port P]``: start a review app with ``streamlit run``.

Light on purpose: ``vsuite --help`` imports this module, so streamlit is not imported here; the server runs as
``python -m apps.serve run apps/<app>.py ... -- RUN --results FILE [--db URL]`` in a child process (streamlit's
own CLI, after importing what the pages need).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console

from apps.args import app_argv

APPS_DIR = Path(__file__).resolve().parent
SCRIPTS = {"qc": APPS_DIR / "qc_review.py", "med": APPS_DIR / "radiology_review.py"}
DEFAULT_PORTS = {"qc": 8501, "med": 8502}

console = Console()
app = typer.Typer(help="Streamlit review apps for operators and radiologists.", no_args_is_help=True)


def port_free(port: int, host: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("0.0.0.0", "") else "", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, host: str) -> int:
    """``preferred`` if free, else the next free one above it."""
    for p in range(preferred, preferred + 100):
        if port_free(p, host):
            return p
    raise typer.BadParameter(f"no free port in {preferred}..{preferred + 99}")


def streamlit_command(which: str, run: Path, results: Path, db: str | None, port: int, host: str) -> list[str]:
    return [sys.executable, "-m", "apps.serve", "run", str(SCRIPTS[which]),
            "--server.port", str(port), "--server.address", host, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal",
            "--", *app_argv(run, results, db)]


def launch(which: str, run: Path, results: Path, db: str | None, port: int | None, host: str) -> int:
    """Print the URL, run the server in the foreground until Ctrl+C; returns its exit code."""
    if not run.is_dir():
        console.print(f"[yellow]warning:[/] {run}: run folder not found (the app will say so)")
    if not results.is_file():
        console.print(f"[yellow]warning:[/] {results}: results file not found (the app will say so)")
    chosen = port if port is not None else pick_port(DEFAULT_PORTS[which], host)
    if port is not None and not port_free(port, host):
        raise typer.BadParameter(f"port {port} is in use", param_hint="--port")
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "") else host
    db_text = db or str(results.expanduser().resolve().parent / "reviews.sqlite")
    console.print(f"[bold]{'QC review' if which == 'qc' else 'Radiology review'}[/] app: "
                  f"[link]http://{shown}:{chosen}[/link]  (reviews in {db_text}; Ctrl+C stops)")
    console.print(f"Local URL: http://{shown}:{chosen}", highlight=False, soft_wrap=True)
    proc = subprocess.Popen(streamlit_command(which, run, results, db, chosen, host),
                            stdout=subprocess.DEVNULL, stderr=None)

    def stop(signum, _frame) -> None:
        proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
        return 0 if rc < 0 else rc  # stopped by our signal: a normal end
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.kill()


_RUN = typer.Argument(..., help="Run directory (run.json and the ONNX models).")
_DB = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite file (default: reviews.sqlite next to the results).")
_PORT = typer.Option(None, "--port", help="Port to serve on (default: 8501 for qc, 8502 for med, or the next free).")
_HOST = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 to serve the network).")


@app.command(epilog="Example: vsuite app qc runs/qc1 --results line_out/results.jsonl")
def qc(
    run: Path = _RUN,
    results: Path = typer.Option(..., "--results", help="results.jsonl (or .csv/.parquet) of `vsuite qc inspect`."),
    db: str | None = _DB,
    port: int | None = _PORT,
    host: str = _HOST,
) -> None:
    """Factory operator app: filter parts, check boxes and crops, confirm/reject defects, KPIs, YOLO export."""
    raise typer.Exit(launch("qc", run, results, db, port, host))


@app.command(epilog="Example: vsuite app med runs/med1 --results studies.csv")
def med(
    run: Path = _RUN,
    results: Path = typer.Option(..., "--results", help="results.csv (or .parquet/.jsonl) of `vsuite score`."),
    db: str | None = _DB,
    port: int | None = _PORT,
    host: str = _HOST,
) -> None:
    """Radiologist dashboard: worklist, 3-plane viewer with N4 and Grad-CAM, sign-off, audit, CSV export."""
    raise typer.Exit(launch("med", run, results, db, port, host))
