"""Throughput benchmark: the full industrial_qc pipeline (decode -> detect -> classify crops -> verdict, ONNX)
against Ultralytics' own ``YOLO(best.pt).predict(file)`` (decode -> detect, torch), on the same 640x640 images
and the same trained yolov5n detector, side by side in one run. Each side runs in its own process so peak RSS
is its own. Reports parts/s, p50/p95 latency (ms) and peak RSS (MiB); prints a table and writes JSON.

    python benchmarks/qc_throughput.py --run runs/qc1 --images 200      # a run trained at imgsz 640
    python benchmarks/qc_throughput.py --quick                          # smoke: trains a throwaway run

Without ``--run`` a throwaway run is trained at 640 px on a few images (weights quality does not change
latency much: the classifier batch grows with the number of candidates, capped by ``max_det``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stats(lat_ms: list[float], wall_s: float) -> dict:
    import numpy as np

    a = np.array(lat_ms)
    return {"parts": len(a), "parts_per_s": len(a) / wall_s, "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean()),
            "peak_rss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    """VmHWM of this process: unlike ru_maxrss it is not inherited across fork/exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side_pipeline(run: Path, files: list[Path], warmup: int, threads: int | None) -> dict:
    from common.inference import share_thread_pool
    from industrial_qc.data import read_image
    from industrial_qc.pipeline import Pipeline

    share_thread_pool(threads)  # as `vsuite qc inspect` does
    pipe = Pipeline.from_run(run, threads=threads)
    for f in files[:warmup]:
        pipe.inspect(read_image(f))
    lat, cands = [], []
    t0 = time.perf_counter()
    for f in files:
        t = time.perf_counter()
        res = pipe.inspect(read_image(f))
        lat.append((time.perf_counter() - t) * 1e3)
        cands.append(res["n_candidates"])
    out = _stats(lat, time.perf_counter() - t0)
    out["mean_candidates"] = sum(cands) / len(cands)
    out["torch_imported"] = "torch" in sys.modules
    return out


def side_ultralytics(run: Path, files: list[Path], warmup: int, imgsz: int, threads: int | None) -> dict:
    from common.runtime import import_ultralytics

    import_ultralytics()
    if threads:
        import torch

        torch.set_num_threads(threads)
    from ultralytics import YOLO

    model = YOLO(str(run / "checkpoints" / "detector_best.pt"))
    for f in files[:warmup]:
        model.predict(str(f), imgsz=imgsz, device="cpu", verbose=False)
    lat = []
    t0 = time.perf_counter()
    for f in files:
        t = time.perf_counter()
        model.predict(str(f), imgsz=imgsz, device="cpu", verbose=False)
        lat.append((time.perf_counter() - t) * 1e3)
    return _stats(lat, time.perf_counter() - t0)


def _child(args: argparse.Namespace) -> None:
    files = [Path(p) for p in json.loads(Path(args.files).read_text())]
    if args.side == "pipeline":
        res = side_pipeline(args.run, files, args.warmup, args.threads)
    else:
        res = side_ultralytics(args.run, files, args.warmup, args.imgsz, args.threads)
    print("RESULT " + json.dumps(res))


def _throwaway_run(work: Path, data_yaml: Path) -> Path:
    from rich.console import Console

    from industrial_qc.config import load_qc_config
    from industrial_qc.train import train_run

    cfg = load_qc_config(None, ["detector.imgsz=640", "detector.epochs=1", "detector.batch=4", "detector.workers=0",
                                "classifier.train.epochs=1"])
    run = work / "run"
    train_run(data_yaml, cfg, run, console=Console(stderr=True))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="trained run (detector at imgsz 640)")
    ap.add_argument("--images", type=int, default=200, help="640x640 images to time")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 images, throwaway run")
    ap.add_argument("--threads", type=int, default=None, help="threads for both sides (default: library default)")
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/qc_throughput"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--side", choices=["pipeline", "ultralytics"], help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--imgsz", type=int, default=640, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        _child(args)
        return

    from rich.console import Console
    from rich.table import Table

    from industrial_qc.synth import SynthConfig, synthesize_shown

    console = Console()
    n = 16 if args.quick else args.images
    work = args.workdir
    total = n + 24  # n timed test images; 18 train + 6 val for the throwaway run
    rep = synthesize_shown(work / "data", SynthConfig(images=total, size=640, seed=5, val_frac=6 / total,
                                                      test_frac=n / total), console)
    files = sorted((work / "data" / "images" / "test").glob("*.jpg"))[:n]
    run = args.run or _throwaway_run(work, rep.data_yaml)
    imgsz = json.loads((run / "run.json").read_text())["config"]["detector"]["imgsz"]
    if imgsz != 640:
        console.print(f"[yellow]note: run detector imgsz is {imgsz}, not 640[/]")
    file_list = work / "files.json"
    file_list.write_text(json.dumps([str(f) for f in files]))
    results = {}
    for side in ("pipeline", "ultralytics"):
        cmd = [sys.executable, __file__, "--side", side, "--run", str(run), "--files", str(file_list),
               "--warmup", str(args.warmup), "--imgsz", str(imgsz)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "YOLO_OFFLINE": "True"})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"{side} side failed:\n{proc.stderr[-3000:]}")
        results[side] = json.loads(line[len("RESULT "):])

    table = Table(title=f"per-part latency, {len(files)} images at 640x640 (CPU)")
    for col in ("side", "parts/s", "p50 ms", "p95 ms", "peak RSS MiB"):
        table.add_column(col, justify="right" if col != "side" else "left")
    names = {"pipeline": "suite: decode+detect+classify+verdict (ONNX)",
             "ultralytics": "YOLO(...).predict() detection only"}
    for side, r in results.items():
        table.add_row(names[side], f"{r['parts_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
                      f"{r['peak_rss_mib']:.0f}")
    console.print(table)
    verdict = results["pipeline"]["p50_ms"] <= results["ultralytics"]["p50_ms"]
    console.print(f"suite median {'<=' if verdict else '>'} Ultralytics median")
    console.print(f"suite: {results['pipeline']['mean_candidates']:.1f} candidate crops per part on average")
    report = {"images": len(files), "imgsz": imgsz, "run": str(run), "quick": args.quick, "results": results,
              "threads": args.threads, "load_average": os.getloadavg(),
              "suite_median_not_slower": verdict}
    out = args.out or work / "report.json"
    out.write_text(json.dumps(report, indent=2))
    console.print(f"-> {out}")


if __name__ == "__main__":
    main()
