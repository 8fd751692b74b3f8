"""How fast the review apps open: ``vsuite app qc|med`` started fresh, Debian's Chromium (Playwright) loads the
page, and the clock stops when the first part image / the three study slices are on screen. Target: < 5 s.

Each repeat starts a new server (a cold first view: imports, model session, results parsing) and then reloads
the page (warm view). ``--parts`` makes the qc results file that long (the test images repeated), to see how
the page scales with a day of line results. Prints a table and writes JSON.

    python benchmarks/app_startup.py                         # 3 repeats, 8 parts
    python benchmarks/app_startup.py --parts 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def grow_results(results: Path, n: int) -> None:
    """Repeat the records of ``results`` until it holds ``n`` lines (new timestamps, same images)."""
    from datetime import datetime, timedelta

    from common.results import JsonlWriter, read_jsonl

    recs = read_jsonl(results)
    t0 = datetime.fromisoformat(recs[0]["timestamp"])
    with JsonlWriter(results) as w:
        for i in range(len(recs), n):
            r = dict(recs[i % len(recs)])
            r["timestamp"] = (t0 + timedelta(seconds=2 * i)).isoformat()
            w.write(r)


def measure(app: str, case: dict, browser, repeats: int, log_dir: Path) -> dict:
    from playwright.sync_api import expect

    from tests.apps.helpers import start_app

    ready = (lambda page: expect(page.get_by_test_id("stImage").first).to_be_visible(timeout=120_000)) \
        if app == "qc" else (lambda page: expect(page.get_by_test_id("stImage")).to_have_count(3, timeout=120_000))
    cold, warm, server = [], [], []
    for r in range(repeats):
        t = time.perf_counter()
        proc, url = start_app(app, case["run_dir"], case["results"], None, log_dir / f"{app}_{r}.log")
        server.append(time.perf_counter() - t)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t = time.perf_counter()
            page.goto(url)
            ready(page)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            page.reload()
            ready(page)
            warm.append(time.perf_counter() - t)
            page.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    return {"server_start_s": server, "first_view_s": cold, "reload_s": warm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", type=int, default=0, help="grow the qc results to this many records")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "app_startup.json")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright
    from rich.console import Console
    from rich.table import Table

    from tests.apps.helpers import make_med_case, make_qc_case

    work = Path(tempfile.mkdtemp(prefix="app_startup_"))
    qc, med = make_qc_case(work / "qc"), make_med_case(work / "med")
    if args.parts:
        grow_results(qc["results"], args.parts)
    results = {"parts": max(args.parts, 8), "cpus": os.cpu_count(), "load_avg": os.getloadavg()}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            results["qc"] = measure("qc", qc, browser, args.repeats, work)
            results["med"] = measure("med", med, browser, args.repeats, work)
        finally:
            browser.close()
    table = Table(title=f"review apps: time to first view (Chromium, {results['parts']} qc records)")
    for col in ("app", "server up s", "first view s (median)", "first view s (max)", "reload s (median)",
                "target < 5 s"):
        table.add_column(col, justify="right" if col != "app" else "left")
    for app in ("qc", "med"):
        r = results[app]
        table.add_row(app, f"{statistics.median(r['server_start_s']):.2f}",
                      f"{statistics.median(r['first_view_s']):.2f}", f"{max(r['first_view_s']):.2f}",
                      f"{statistics.median(r['reload_s']):.2f}",
                      "yes" if max(r["first_view_s"]) < 5 else "NO")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
