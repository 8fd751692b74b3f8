"""The apps run on onnxruntime, SimpleITK and OpenCV alone: both pages go through their main flow in a fresh
interpreter where importing torch fails, and torch is never loaded."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.apps.helpers import REPO

SCRIPT = r"""
import importlib.abc, json, sys, time
from pathlib import Path


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked: the review apps must not import it")


sys.meta_path.insert(0, NoTorch())
import apps.cli, apps.qc_review, apps.radiology_review  # noqa: E401,F401
from common.store import open_store
from tests.apps.helpers import app_test, errors, make_med_case, make_qc_case, served_on

root = Path(sys.argv[1])
qc, med = make_qc_case(root / "qc"), make_med_case(root / "med")
out = {}
served = served_on("127.0.0.1")  # as `vsuite app` serves them by default (no login); kept till exit
served.__enter__()
sys.argv = ["qc_review.py", str(qc["run_dir"]), "--results", str(qc["results"]), "--data-root", str(qc["images"])]
t = time.perf_counter()
at = app_test("qc_review.py")
out["qc_first_run_s"] = time.perf_counter() - t
at.sidebar.text_input(key="qc_reviewer").set_value("ann")
at.selectbox(key="qc_part").set_value(str(qc["images"] / "part_02.png")).run()
images, errs = len(at.image), errors(at)  # the part and its two crops, classified by classifier.onnx
at.button(key="FormSubmitter:qc_form_2-Save decision").click().run()
out["qc"] = {"exceptions": [e.value for e in at.exception], "errors": errs, "images": images}
sys.argv = ["radiology_review.py", str(med["run_dir"]), "--results", str(med["results"]), "--data-root",
            str(med["root"] / "studies")]
t = time.perf_counter()
at = app_test("radiology_review.py")
out["med_first_run_s"] = time.perf_counter() - t
for view in ("N4-corrected", "Bias field", "Preprocessed"):
    at.radio(key="med_1_view").set_value(view).run()
images, errs = len(at.image), errors(at)
at.text_input(key="med_1_reviewer").set_value("dr a")
at.button(key="FormSubmitter:med_1_form-Sign off").click().run()
out["med"] = {"exceptions": [e.value for e in at.exception], "errors": errs, "images": images}
out["rows"] = open_store(qc["db"]).count() + open_store(med["db"]).count()
out["torch_loaded"] = any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print(json.dumps(out))
"""


def test_apps_never_import_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["qc"] == {"exceptions": [], "errors": [], "images": 3}
    assert out["med"] == {"exceptions": [], "errors": [], "images": 3}
    assert out["rows"] == 2
    assert out["torch_loaded"] is False
    print(f"first page run: qc {out['qc_first_run_s']:.2f} s, med {out['med_first_run_s']:.2f} s")
