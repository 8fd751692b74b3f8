"""``vsuite app qc|med RUN --results FILE [--db URL] [--export-root DIR] [--data-root DIR] [--port P] [--host H]``:
start a review app with ``streamlit run``; ``vsuite app verify DB``: check the review database's hash chains.

Light on purpose: ``vsuite --help`` imports this module, so streamlit is not imported here; the server runs as
``python -m apps.serve run apps/<app>.py ... -- RUN --results FILE ...`` in a child process (streamlit's own CLI,
after importing what the pages need). On any address but loopback it starts only with a login configured
(``apps.auth``).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from apps import auth
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


def streamlit_command(which: str, run: Path, results: Path, db: str | None, port: int, host: str,
                      export_root: Path | None = None, data_roots: list[Path] | tuple[Path, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "apps.serve", "run", str(SCRIPTS[which]),
            "--server.port", str(port), "--server.address", host, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal",
            "--", *app_argv(run, results, db, export_root, data_roots)]


def check_access(host: str) -> str:
    """The login the app will ask for on ``host``; typer.BadParameter (exit 2) when it may not be served there."""
    files = auth.default_secrets_files()
    problem = auth.launch_problem(host, files)
    if problem:
        raise typer.BadParameter(problem, param_hint="--host")
    mode = auth.login_mode(files)
    password = auth.app_password()
    if mode == "password" and password is not None and len(password) < auth.MIN_PASSWORD_CHARS:
        console.print(f"[yellow]warning:[/] {auth.PASSWORD_ENV} is shorter than {auth.MIN_PASSWORD_CHARS} "
                      "characters")
    if not auth.is_loopback(host):
        console.print("[yellow]note:[/] served over plain HTTP on the network: put it behind TLS (a reverse proxy "
                      "or --server.sslCertFile) so the login is not sent in clear")
    return {"oidc": "OIDC login (.streamlit/secrets.toml [auth])",
            "password": f"login with a name and the password in {auth.PASSWORD_ENV}",
            "none": "no login (loopback only; reviewers type their name)"}[mode]


def launch(which: str, run: Path, results: Path, db: str | None, port: int | None, host: str,
           export_root: Path | None = None, data_roots: list[Path] | tuple[Path, ...] = ()) -> int:
    """Check the login for ``host``, print the URL, run the server in the foreground until Ctrl+C; returns its
    exit code."""
    access = check_access(host)
    if not run.is_dir():
        console.print(f"[yellow]warning:[/] {run}: run folder not found (the app will say so)")
    if not results.is_file():
        console.print(f"[yellow]warning:[/] {results}: results file not found (the app will say so)")
    chosen = port if port is not None else pick_port(DEFAULT_PORTS[which], host)
    if port is not None and not port_free(port, host):
        raise typer.BadParameter(f"port {port} is in use", param_hint="--port")
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "") else host
    db_text = db or str(results.expanduser().resolve().parent / "reviews.sqlite")
    export_text = str(export_root.expanduser().resolve() if export_root else results.expanduser().resolve().parent)
    console.print(f"[bold]{'QC review' if which == 'qc' else 'Radiology review'}[/] app: "
                  f"[link]http://{shown}:{chosen}[/link]  (reviews in {db_text}; exports under {export_text}; "
                  f"{access}; Ctrl+C stops)")
    console.print(f"Local URL: http://{shown}:{chosen}", highlight=False, soft_wrap=True)
    proc = subprocess.Popen(streamlit_command(which, run, results, db, chosen, host, export_root, data_roots),
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
_HOST = typer.Option("127.0.0.1", "--host", help=f"Address to listen on (0.0.0.0 to serve the network: needs "
                     f"{auth.PASSWORD_ENV} or OIDC login in .streamlit/secrets.toml).")
_EXPORT = typer.Option(None, "--export-root", help="Folder the app may write exports under (default: the results "
                       "file's folder).")
_DATA = typer.Option(None, "--data-root", help="A folder the app may read images/studies from, besides the run and "
                     "results folders (repeat for more).")


@app.command(epilog="Example: vsuite app qc runs/qc1 --results line_out/results.jsonl")
def qc(
    run: Path = _RUN,
    results: Path = typer.Option(..., "--results", help="results.jsonl (or .csv/.parquet) of `vsuite qc inspect`."),
    db: str | None = _DB,
    export_root: Path | None = _EXPORT,
    data_root: list[Path] | None = _DATA,
    port: int | None = _PORT,
    host: str = _HOST,
) -> None:
    """Factory operator app: filter parts, check boxes and crops, confirm/reject defects, KPIs, YOLO export."""
    raise typer.Exit(launch("qc", run, results, db, port, host, export_root, data_root or []))


@app.command(epilog="Example: vsuite app med runs/med1 --results studies.csv")
def med(
    run: Path = _RUN,
    results: Path = typer.Option(..., "--results", help="results.csv (or .parquet/.jsonl) of `vsuite score`."),
    db: str | None = _DB,
    export_root: Path | None = _EXPORT,
    data_root: list[Path] | None = _DATA,
    port: int | None = _PORT,
    host: str = _HOST,
) -> None:
    """Radiologist dashboard: worklist, 3-plane viewer with N4 and Grad-CAM, sign-off, audit, CSV export."""
    raise typer.Exit(launch("med", run, results, db, port, host, export_root, data_root or []))


@app.command(epilog="Example: vsuite app verify line_out/reviews.sqlite")
def verify(
    db: str = typer.Argument(..., help="Review database: SQLite file or SQLAlchemy URL."),
) -> None:
    """Check the review database's hash chains: exit 0 when intact, 1 naming the first broken row of each table."""
    from common.store_chain import verify_chain  # SQLAlchemy: only for this command

    report = verify_chain(db)
    table = Table(title=f"hash chains of {report.database}")
    for col in ("table", "rows", "head hash", "first broken row", "breaks"):
        table.add_column(col)
    for t in report.tables:
        first = t.first_break
        table.add_row(t.table, str(t.rows), (t.head or "-")[:16],
                      "-" if first is None else (str(first.row_id) if first.row_id else "all"),
                      "[green]intact[/]" if first is None else f"[red]{len(t.breaks)}[/]")
    console.print(table)
    for t in report.tables:
        if t.first_break is not None:
            console.print(f"[red]broken:[/] {t.first_break.message}", highlight=False, soft_wrap=True)
    for t in report.tables:
        console.print(f"head of {t.table}: {t.head or '-'}", highlight=False, soft_wrap=True)
    if report.ok:
        console.print("[green]intact:[/] every row matches its hash and links to the one before it; note the heads "
                      "elsewhere to detect rows cut off the end later", highlight=False)
    raise typer.Exit(0 if report.ok else 1)
