"""Speed/quality benchmark of medical3d preprocessing against ANTsPy's N4 (antspyx, benchmark-only dependency).

A 160x192x192 1 mm MRI head phantom with a known smooth bias field is written to disk. Then, each in a fresh
subprocess of the same run (so peak RSS is per method):

* ours: read, orient, N4 (configs/medical3d/default.yaml), resample, crop/pad, normalize; and
* ANTsPy: ``ants.n4_bias_field_correction`` with its defaults.

antspyx pins numpy<2.4 and scipy<1.16, which clash with the project's constraints, so it lives in its own
environment: ``--ants-python /path/to/venv/bin/python`` (or $VSUITE_ANTS_PYTHON) runs the ANTs worker there;
that worker imports only ants and numpy. Without either, the current interpreter is tried.

Quality is the coefficient of variation (std/mean) inside the phantom's eroded white matter, one tissue whose
only variation is residual bias plus noise. Also: median onnxruntime inference time for one 96^3 study with the
default network. Prints a table and writes JSON.

    python benchmarks/med_preprocess.py --out benchmarks/results/med_preprocess.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_mb() -> float:
    """Peak resident set of this process (VmHWM). Unlike ru_maxrss, which Linux carries over from the parent
    across fork+exec, VmHWM starts afresh at exec, so it measures the worker alone."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cv(values) -> float:
    return float(values.std() / values.mean())


def worker_ours(image_path: str, mask_path: str) -> dict:
    import numpy as np
    import SimpleITK as sitk

    from common.config import read_yaml
    from medical3d.config import DEFAULT_CONFIG, PreprocessConfig
    from medical3d.io import read_study
    from medical3d.preprocess import (
        canonical_direction,
        crop_or_pad,
        foreground_mask,
        mri_zscore,
        n4_correct,
        reorient,
        resample,
    )
    # Only the preprocessing section: this worker must not import torch, so its peak RSS is preprocessing's.
    cfg = PreprocessConfig.model_validate(read_yaml(DEFAULT_CONFIG)["preprocess"])
    t0 = time.perf_counter()
    image, _ = read_study(image_path, cfg.read)
    t_read = time.perf_counter() - t0
    oriented, _ = reorient(image, cfg.orient)
    t1 = time.perf_counter()
    corrected, _, report = n4_correct(oriented, cfg.n4)
    t_n4 = time.perf_counter() - t1
    t2 = time.perf_counter()
    res, _ = resample(corrected, cfg.resample, canonical_direction(cfg.orient.code))
    cropped, _ = crop_or_pad(res, cfg.crop, foreground_mask(res))
    out = mri_zscore(cropped, foreground_mask(cropped), cfg.intensity)
    t_rest = time.perf_counter() - t2
    total = time.perf_counter() - t0
    # The phantom is stored LPS, so the oriented grid is the mask's grid.
    mask = sitk.GetArrayFromImage(sitk.ReadImage(mask_path)) > 0
    vals = sitk.GetArrayFromImage(corrected)[mask].astype(np.float64)
    return {"n4_seconds": t_n4, "read_seconds": t_read, "after_n4_seconds": t_rest, "total_seconds": total,
            "cv": _cv(vals), "output_size": list(out.GetSize()), "n4_config": cfg.n4.model_dump(),
            "fit_size": report.fit_size,
            "peak_rss_mb": _peak_rss_mb()}


def worker_ants(image_path: str, mask_path: str) -> dict:
    import ants
    import numpy as np

    image = ants.image_read(image_path)
    mask = ants.image_read(mask_path).numpy() > 0
    t0 = time.perf_counter()
    corrected = ants.n4_bias_field_correction(image)
    dt = time.perf_counter() - t0
    vals = corrected.numpy()[mask].astype(np.float64)
    return {"n4_seconds": dt, "cv": _cv(vals), "version": getattr(ants, "__version__", "?"),
            "peak_rss_mb": _peak_rss_mb()}


def _run_worker(kind: str, image: Path, mask: Path, threads: int | None, python: str = sys.executable) -> dict:
    import os

    env = dict(os.environ)
    if threads:
        env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    proc = subprocess.run([python, __file__, "--worker", kind, str(image), str(mask)], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def onnx_inference_ms(workdir: Path, run_dir: Path | None, repeats: int) -> dict:
    import numpy as np

    from common.inference import OnnxModel

    if run_dir is not None:
        path = run_dir / "model.onnx"
    else:
        import torch

        from common.export import export_onnx
        from medical3d.config import load_medical_config
        from medical3d.models import build_model

        cfg = load_medical_config()
        model = build_model(cfg.model, 2).eval()
        path = workdir / "model.onnx"
        export_onnx(model, torch.zeros((1, 1, *reversed(cfg.preprocess.crop.size))), path, {"labels": ["a", "b"]})
    model = OnnxModel(path)
    x = np.random.default_rng(0).normal(size=(1, 1, 96, 96, 96)).astype(np.float32)
    model.run(x)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.run(x)
        times.append((time.perf_counter() - t) * 1000)
    return {"model": str(path), "median_ms": statistics.median(times), "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "IMAGE", "MASK"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "med_preprocess.json")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--run", type=Path, default=None, help="Use this run's model.onnx for the inference timing.")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-ants", action="store_true")
    ap.add_argument("--ants-python", default=None,
                    help="Python with antspyx installed (default: $VSUITE_ANTS_PYTHON, else this interpreter).")
    ap.add_argument("--threads", type=int, default=None, help="ITK threads for both methods (default: all).")
    args = ap.parse_args()
    if args.worker:
        kind, image, mask = args.worker
        if kind == "ants":  # may run in a separate environment without the project's dependencies
            print(json.dumps(worker_ants(image, mask)))
            return
        result = worker_ours(image, mask) if kind == "ours" else worker_ants(image, mask)
        print(json.dumps(result))
        return

    import SimpleITK as sitk

    from medical3d.synth import bias_phantom

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="med_preprocess_"))
    workdir.mkdir(parents=True, exist_ok=True)
    phantom = bias_phantom((160, 192, 192), 1.0, seed=0)
    image_path, mask_path = workdir / "phantom.nii.gz", workdir / "wm_mask.nii.gz"
    sitk.WriteImage(phantom["image"], str(image_path), True)
    sitk.WriteImage(phantom["wm_mask"], str(mask_path), True)
    mask = sitk.GetArrayFromImage(phantom["wm_mask"]) > 0
    uncorrected_cv = _cv(sitk.GetArrayFromImage(phantom["image"])[mask].astype("float64"))
    del phantom

    ours = _run_worker("ours", image_path, mask_path, args.threads)
    import os

    ants_python = args.ants_python or os.environ.get("VSUITE_ANTS_PYTHON") or sys.executable
    ants_res = ({"skipped": True} if args.skip_ants
                else _run_worker("ants", image_path, mask_path, args.threads, ants_python))
    inference = onnx_inference_ms(workdir, args.run, args.repeats)

    result = {"phantom": {"size": [160, 192, 192], "spacing_mm": 1.0, "uncorrected_cv": uncorrected_cv},
              "ours": ours, "antspy": ants_res, "onnx_inference": inference}
    if "n4_seconds" in ours and "n4_seconds" in ants_res:
        result["time_ratio"] = ours["n4_seconds"] / ants_res["n4_seconds"]
        result["cv_ratio"] = ours["cv"] / ants_res["cv"]
        result["targets"] = {"time_ratio<=0.5": result["time_ratio"] <= 0.5,
                             "cv_ratio<=1.05": result["cv_ratio"] <= 1.05,
                             "peak_rss<=2GB": ours.get("peak_rss_mb", 1e9) <= 2048}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")

    from rich.console import Console
    from rich.table import Table

    table = Table(title="N4 on a 160x192x192 1 mm MRI phantom (white-matter CV)")
    for col in ("method", "N4 s", "total s", "CV", "peak RSS MB"):
        table.add_column(col, justify="right")
    table.add_row("uncorrected", "-", "-", f"{uncorrected_cv:.4f}", "-")
    for name, r in (("ours (SimpleITK)", ours), ("ANTsPy defaults", ants_res)):
        if "n4_seconds" in r:
            table.add_row(name, f"{r['n4_seconds']:.2f}", f"{r.get('total_seconds', r['n4_seconds']):.2f}",
                          f"{r['cv']:.4f}", f"{r['peak_rss_mb']:.0f}")
        else:
            table.add_row(name, str(r.get("error", "skipped")), "", "", "")
    console = Console()
    console.print(table)
    if "time_ratio" in result:
        console.print(f"time ratio ours/ANTs {result['time_ratio']:.3f} (target <= 0.5), CV ratio "
                      f"{result['cv_ratio']:.3f} (target <= 1.05)")
    console.print(f"median ONNX inference per 96^3 study: {inference['median_ms']:.1f} ms ({inference['model']})")
    console.print(f"-> {args.out}")


if __name__ == "__main__":
    main()
