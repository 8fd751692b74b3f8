"""Small run folders and results for the app tests: tiny PNG parts, 32^3 NIfTI studies, tiny ONNX models.

Everything is built with the real libraries (OpenCV, SimpleITK, onnx, our result writers); nothing is mocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from common.results import JsonlWriter, write_records
from common.rundir import write_run_json

REPO = Path(__file__).resolve().parents[2]
QC_CLASSES = ["scratch", "pit", "stain"]
MED_LABELS = ["normal", "lesion"]


# ------------------------------------------------------------------------------------------------ ONNX models
def _save_model(graph: onnx.GraphProto, path: Path, metadata: dict) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def tiny_classifier_onnx(path: Path, labels: list[str], crop_size: int = 32, *, flat: bool = False,
                         metadata: dict | None = None) -> None:
    """(B, 3, S, S) -> global average pool (``flat``: every pixel) -> linear -> (B, C) logits, with the metadata
    stage 2 writes (plus ``metadata``)."""
    c = len(labels)
    rng = np.random.default_rng(0)
    n_in = 3 * crop_size * crop_size if flat else 3
    w = helper.make_tensor("W", TensorProto.FLOAT, [n_in, c],
                           rng.normal(0, 0.05 if flat else 2, (n_in, c)).astype(np.float32).ravel())
    b = helper.make_tensor("B", TensorProto.FLOAT, [c], np.zeros(c, np.float32))
    pool = [] if flat else [helper.make_node("GlobalAveragePool", ["images"], ["pooled"])]
    nodes = [*pool, helper.make_node("Flatten", ["images" if flat else "pooled"], ["flat"])]
    graph = helper.make_graph(
        [*nodes, helper.make_node("Gemm", ["flat", "W", "B"], ["logits"])],
        "tiny_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, crop_size, crop_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c])],
        initializer=[w, b],
    )
    _save_model(graph, path, {"labels": labels, "crop_size": crop_size, "context": 0.5, "min_crop": 0.06,
                              "temperature": 1.5, "thresholds": {"fail": 0.6, "review": 0.3}, **(metadata or {})})


def tiny_identity_onnx(path: Path, shape: list, metadata: dict) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "tiny_identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    _save_model(graph, path, metadata)


# ------------------------------------------------------------------------------------------------ industrial
def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.normal(128, 12, (size, size)).astype(np.float32)
    base = cv2.GaussianBlur(base, (0, 0), 1.0) + np.linspace(-10, 10, size)[None, :]
    return np.clip(np.repeat(base[..., None], 3, axis=2), 0, 255).astype(np.uint8)


def make_qc_case(root: Path, *, models: bool = True, parts: int = 6) -> dict:
    """A qc run folder and ``line_out/results.jsonl`` written like ``vsuite qc inspect`` writes it.

    Parts: PASS, FAIL (scratch), FAIL (pit + stain), REVIEW (stain), ... plus one error record (corrupt file)
    and one ok record whose image was later replaced by garbage (unreadable image in the app).
    """
    rng = np.random.default_rng(1)
    run_dir = root / "runs" / "qc-test"
    labels = ["background", *QC_CLASSES]
    run = write_run_json(run_dir, vertical="industrial_qc", labels=labels, config={"test": True},
                         data_fingerprint="test", metrics={}, thresholds={"fail": 0.6, "review": 0.3},
                         detector_names=QC_CLASSES)
    if models:
        tiny_classifier_onnx(run_dir / "classifier.onnx", labels)
        tiny_identity_onnx(run_dir / "detector.onnx", [1, 3, 64, 64], {"labels": QC_CLASSES})
    img_dir = root / "parts"
    img_dir.mkdir(parents=True)
    t0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    plans = [
        ("PASS", []),
        ("FAIL", [("scratch", [10, 12, 30, 16], 0.97)]),
        ("FAIL", [("pit", [40, 40, 48, 48], 0.91), ("stain", [5, 40, 20, 58], 0.72)]),
        ("REVIEW", [("stain", [22, 22, 34, 34], 0.45)]),
        ("PASS", []),
        ("FAIL", [("pit", [30, 5, 38, 13], 0.88)]),
    ][:parts]
    out = root / "line_out"
    results = out / "results.jsonl"
    with JsonlWriter(results) as w:
        for i, (verdict, defects) in enumerate(plans):
            img = _texture(rng, 64)
            for cls, (x1, y1, x2, y2), _ in defects:
                cv2.rectangle(img, (x1, y1), (x2, y2), (40, 40, 40) if cls != "stain" else (90, 120, 150), -1)
            path = img_dir / f"part_{i:02d}.png"
            cv2.imwrite(str(path), img)
            w.write({
                "source": str(path), "status": "ok", "reason": None,
                "timestamp": (t0 + timedelta(minutes=7 * i)).isoformat(timespec="milliseconds"),
                "file": str(path), "run_id": run["run_id"], "ledger_key": f"{path}|1|1", "verdict": verdict,
                "max_defect_prob": max((p for *_, p in defects), default=0.0),
                "defects": [{"box": [float(v) for v in box], "det_class": cls, "det_conf": round(p - 0.1, 3),
                             "cls_class": cls, "cls_prob": p, "defect_prob": p} for cls, box, p in defects],
                "n_candidates": len(defects), "detect_ms": 3.1, "classify_ms": 1.2, "width": 64, "height": 64,
                "decode_ms": 0.3, "latency_ms": 4.6,
            })
        bad = img_dir / "part_corrupt.png"
        bad.write_bytes(b"\x89PNG not really")
        w.write({"source": str(bad), "status": "error", "reason": f"{bad}: cannot decode image",
                 "timestamp": (t0 + timedelta(minutes=50)).isoformat(), "file": str(bad), "run_id": run["run_id"]})
        gone = img_dir / "part_vanished.png"
        gone.write_bytes(b"")  # the line scored it, then the file was truncated: the app cannot read it
        w.write({"source": str(gone), "status": "ok", "reason": None, "file": str(gone), "run_id": run["run_id"],
                 "timestamp": (t0 + timedelta(minutes=55)).isoformat(), "verdict": "FAIL", "max_defect_prob": 0.8,
                 "defects": [{"box": [1.0, 1.0, 9.0, 9.0], "det_class": "pit", "det_conf": 0.5, "cls_class": "pit",
                              "cls_prob": 0.8, "defect_prob": 0.8}], "latency_ms": 5.0})
    return {"root": root, "run_dir": run_dir, "run": run, "results": results, "images": img_dir,
            "db": out / "reviews.sqlite"}


# ------------------------------------------------------------------------------------------------ medical
def _phantom(size: int, lesion: bool, rng: np.random.Generator) -> np.ndarray:
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float32)
    c = (size - 1) / 2
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2 + ((z - c) * 1.2) ** 2)
    vol = np.where(r < size * 0.42, 300.0, 0.0) + np.where(r < size * 0.3, 200.0, 0.0)
    if lesion:
        rl = np.sqrt((x - c - 5) ** 2 + (y - c + 3) ** 2 + (z - c) ** 2)
        vol += np.where(rl < 3, 250.0, 0.0)
    return (vol + rng.normal(0, 8, vol.shape)).astype(np.float32)


def make_med_case(root: Path, *, models: bool = True) -> dict:
    """A medical3d run folder, 32^3 NIfTI studies and ``scores/results.csv`` written like ``vsuite score``.

    Rows: a REVIEW study and a positive with bias field, preprocessed volume and Grad-CAM NIfTIs, a negative
    without them, a CT study, a row whose study file is corrupt, and an error row.
    """
    import SimpleITK as sitk

    rng = np.random.default_rng(2)
    run_dir = root / "runs" / "med-test"
    run = write_run_json(run_dir, vertical="medical3d", labels=MED_LABELS,
                         config={"data": {"positive_label": "lesion"}, "preprocess": {"modality": "mri"}},
                         data_fingerprint="test", metrics={}, threshold=0.5, positive_label="lesion")
    if models:
        tiny_identity_onnx(run_dir / "model.onnx", [1, 1, 32, 32, 32],
                           {"labels": MED_LABELS, "positive_label": "lesion", "threshold": 0.5, "review_band": 0.1,
                            "temperature": 1.2, "preprocessing": {"modality": "mri", "n4": {"shrink_factor": 2}}})
    studies = root / "studies"
    art = root / "scores" / "artifacts"
    studies.mkdir(parents=True)
    art.mkdir(parents=True)

    def write(arr: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0), direction=None) -> Path:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        if direction is not None:
            img.SetDirection(direction)
        sitk.WriteImage(img, str(path))
        return path

    rows = []
    z, y, x = np.mgrid[:32, :32, :32].astype(np.float32)
    specs = [("case_000", True, "REVIEW", 0.55), ("case_001", True, "positive", 0.93),
             ("case_002", False, "negative", 0.04)]
    for name, lesion, verdict, p in specs:
        clean = _phantom(32, lesion, rng)
        bias = (1.0 + 0.3 * (x - 16) / 16).astype(np.float32)
        src = write(clean * bias, studies / f"{name}.nii.gz", spacing=(1.2, 1.2, 1.5))
        # the fields medical3d.score writes
        row = {"source": str(src), "study": name, "status": "ok", "reason": None,
               "label": "lesion" if p >= 0.5 else "normal", "verdict": verdict, "score": p,
               "probabilities": {"normal": 1 - p, "lesion": p}, "threshold": 0.5, "format": "nifti",
               "series_uid": None, "series_choice": None, "orientation": "LPS", "oblique_deg": 0.0,
               "original_size": [32, 32, 32], "original_spacing": [1.2, 1.2, 1.5], "n4_seconds": 0.4,
               "bias_min": 0.7, "bias_max": 1.3, "cv_before": 0.31, "cv_after": 0.22, "foreground_clipped": False,
               "preprocess_seconds": 0.5, "inference_ms": 3.0, "seconds": 0.6,
               "timestamp": datetime(2026, 1, 5, 9, 0, tzinfo=UTC).isoformat(), "run_id": run["run_id"]}
        prep = ((clean - clean.mean()) / clean.std()).astype(np.float32)
        cam = np.exp(-((x - 21) ** 2 + (y - 13) ** 2 + (z - 16) ** 2) / 30.0).astype(np.float32)
        if name != "case_002":  # artifact paths in the row, as a scorer that writes them would
            row["preprocessed"] = str(write(prep, art / f"{name}_preprocessed.nii.gz", spacing=(1.2, 1.2, 1.5)))
            row["bias_field"] = str(write(bias, art / f"{name}_bias_field.nii.gz", spacing=(1.2, 1.2, 1.5)))
            row["gradcam"] = str(write(cam, art / f"{name}_gradcam.nii.gz", spacing=(1.2, 1.2, 1.5)))
        else:  # only what `vsuite med eval` leaves in the run: RUN/eval/test/gradcam/<study>_{image,cam}.nii.gz
            cams = run_dir / "eval" / "test" / "gradcam"
            cams.mkdir(parents=True)
            write(prep, cams / f"{name}_image.nii.gz", spacing=(1.2, 1.2, 1.5))
            write(cam, cams / f"{name}_cam.nii.gz", spacing=(1.2, 1.2, 1.5))
        rows.append(row)
    ct = _phantom(32, False, rng) * 3 - 1000  # HU-like: air -1000, tissue around 0..500
    ct_path = write(ct.astype(np.float32), studies / "ct_003.nii.gz")
    rows.append({"source": str(ct_path), "study": "ct_003", "status": "ok", "reason": None, "run_id": run["run_id"],
                 "label": "normal", "probabilities": {"normal": 0.8, "lesion": 0.2}, "score": 0.2,
                 "verdict": "negative", "modality": "ct",
                 "timestamp": datetime(2026, 1, 5, 9, 5, tzinfo=UTC).isoformat()})
    corrupt = studies / "case_004.nii.gz"
    corrupt.write_bytes(b"this is not a nifti file")
    rows.append({"source": str(corrupt), "study": "case_004", "status": "ok", "reason": None, "run_id": run["run_id"],
                 "label": "lesion", "probabilities": {"normal": 0.3, "lesion": 0.7}, "score": 0.7,
                 "verdict": "positive"})
    rows.append({"source": str(studies / "case_005"), "study": "case_005", "status": "error",  # error_record
                 "reason": "case_005: DICOM series has a missing slice", "run_id": run["run_id"],
                 "timestamp": datetime(2026, 1, 5, 9, 9, tzinfo=UTC).isoformat()})
    results = write_records(rows, root / "scores" / "results.csv")
    return {"root": root, "run_dir": run_dir, "run": run, "results": results, "db": results.parent / "reviews.sqlite"}


# ------------------------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(app: str, run_dir: Path, results: Path, db: str | None, log: Path,
              data_roots: list[Path] | None = None, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``vsuite app <app> RUN --results FILE --data-root D --port P`` in the background; returns the process and
    its URL once the server answers its health check.

    ``data_roots`` default: the case folder above the results (``make_qc_case`` / ``make_med_case`` keep the
    images and studies there, beside the results folder, as a line's hot folder would be)."""
    port = free_port()
    cmd = [sys.executable, "-c", "from common.cli import main; main()", "app", app, str(run_dir),
           "--results", str(results), "--port", str(port)]
    for d in data_roots if data_roots is not None else [Path(results).parent.parent]:
        cmd += ["--data-root", str(d)]
    if db:
        cmd += ["--db", db]
    f = open(log, "w")  # noqa: SIM115 - handed to the process, closed with it
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app server exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"app server did not start in 60 s: {log.read_text()}")


# ------------------------------------------------------------------------------------------------ AppTest
def app_test(script: str):
    """An AppTest of ``apps/<script>``, run once (the caller sets sys.argv first)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(REPO / "apps" / script), default_timeout=60).run()


_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def plain(text: str) -> str:
    """Markdown as the reader sees it: the backslash escapes ``apps.ui.md`` puts before punctuation removed."""
    return _ESCAPED.sub(r"\1", text)


def errors(at) -> list[str]:
    return [plain(e.value) for e in at.error]


def texts(elements) -> list[str]:
    """``plain`` values of AppTest elements (at.success, at.warning, at.caption, at.markdown, ...)."""
    return [plain(e.value) for e in elements]


@contextlib.contextmanager
def served_on(address: str | None, secrets_files: list[str] | None = None):
    """Pages check the address streamlit serves on (AppTest has no server): set it as ``vsuite app --host`` would,
    with no secrets file (no OIDC login) unless given; restored afterwards."""
    from streamlit import config

    old = {k: config.get_option(k) for k in ("server.address", "secrets.files")}
    config.set_option("server.address", address)
    config.set_option("secrets.files", list(secrets_files or []))
    try:
        yield
    finally:
        for k, v in old.items():
            config.set_option(k, v)


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ------------------------------------------------------------------------------------------------ review pages
SAVE = "FormSubmitter:qc_form_{}-Save decision"
EXPORT = "FormSubmitter:qc_export-Export YOLO dataset"


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "vsuite-tmp" in p.name or "vsuite-old" in p.name]


def training_set(folder: Path, images: int = 160, labels: int = 119) -> dict[str, str]:
    """A YOLO training set somebody else made (data.yaml included, as the old export took for its own)."""
    for i in range(images):
        (folder / "images" / "train").mkdir(parents=True, exist_ok=True)
        (folder / "images" / "train" / f"img_{i:03d}.png").write_bytes(b"png %d" % i)
    for i in range(labels):
        (folder / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (folder / "labels" / "train" / f"img_{i:03d}.txt").write_text(f"0 0.5 0.5 0.1 0.{i % 9 + 1}\n")
    (folder / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: {0: scratch}\n")
    return snapshot(folder)


def qc_page(case: dict, app_argv, export_root: Path, reviewer: str | None = "ann", save: tuple[int, ...] = (1, 2)):
    app_argv(case["run_dir"], "--results", case["results"], "--data-root", case["images"], "--export-root", export_root)
    at = app_test("qc_review.py")
    if reviewer:
        at.sidebar.text_input(key="qc_reviewer").set_value(reviewer)
    for i in save:
        at.selectbox(key="qc_part").set_value(str(case["images"] / f"part_{i:02d}.png")).run()
        at.button(key=SAVE.format(i)).click().run()
    return at


def export(at, name: str, replace: bool = False):
    at.text_input(key="qc_export_dir").set_value(name)
    at.checkbox(key="qc_export_replace").set_value(replace)
    return at.button(key=EXPORT).click().run()
