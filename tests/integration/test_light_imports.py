"""The inference side runs on onnxruntime, OpenCV, SimpleITK and numpy alone: every entry point that scores, runs
the line, preprocesses or serves a review page imports neither torch nor scikit-learn. Each check runs in a fresh
interpreter, importing what that entry point imports (the ``vsuite`` plug-ins resolved as the CLI resolves them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.apps.helpers import REPO
from tests.medical3d.helpers import make_run, phantom, write

REPORT = "\nprint(json.dumps({m: m in sys.modules for m in ('torch', 'sklearn')}))\n"
HEAVY_NONE = {"torch": False, "sklearn": False}
VSUITE = "from common import cli\ncli._register_groups()  # what `vsuite ...` loads before any command\n"

ENTRY_POINTS = {
    "vsuite score (industrial_qc run)": VSUITE + "import common.results, common.rundir\n"
                                        "cli._entry_points('vsuite.scorers')['industrial_qc'].load()\n"
                                        "import industrial_qc.score\n",
    "vsuite qc inspect": VSUITE + "import industrial_qc.cli, industrial_qc.line\n",
    "vsuite score (medical3d run)": VSUITE + "import common.results, common.rundir\n"
                                    "cli._entry_points('vsuite.scorers')['medical3d'].load()\n"
                                    "import medical3d.score\n",
    "vsuite med preprocess": VSUITE + "import medical3d.cli, medical3d.config, medical3d.workflows, "
                                      "medical3d.preprocess\n",
    "vsuite app": VSUITE + "import apps.cli, apps.serve\n",
    "apps.qc_review": "import apps.qc_review\n",
    "apps.radiology_review": "import apps.radiology_review\n",
}


def _heavy_loaded(code: str, *args: str, timeout: float = 120) -> dict:
    """Run ``code`` in a fresh interpreter (argv: ``args``); which of torch / sklearn it left in sys.modules."""
    proc = subprocess.run([sys.executable, "-c", "import json, sys\n" + code + REPORT, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_point_imports_neither_torch_nor_sklearn(entry):
    assert _heavy_loaded(ENTRY_POINTS[entry]) == HEAVY_NONE, entry


QC_RUN = r"""
from pathlib import Path
from rich.console import Console
from common.rundir import read_run_json
from industrial_qc.line import InspectOptions, run_line
from industrial_qc.score import score

run, images, out = (Path(a) for a in sys.argv[1:4])
records = score(run, [str(images)], out / "scores.jsonl", console=Console(quiet=True), run=read_run_json(run))
assert records and all(r["status"] == "ok" for r in records), records
summary = run_line(run, str(images), out / "line", InspectOptions(), console=Console(quiet=True))
assert summary["parts"] == len(records), summary
"""


def test_qc_scoring_and_the_line_run_without_either(tiny_run, tiny_data, tmp_path):
    """Not only the imports: scoring and the line script do their work (lazy imports included) without them."""
    import shutil

    from industrial_qc.data import load_dataset

    images = tmp_path / "parts"
    images.mkdir()
    for s in load_dataset(tiny_data).split("test")[:3]:
        shutil.copy2(s.image, images / s.image.name)
    assert _heavy_loaded(QC_RUN, str(tiny_run), str(images), str(tmp_path)) == HEAVY_NONE


APPS_FLOW = r"""
import importlib.abc, time
from pathlib import Path


class NoHeavy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "sklearn"):
            raise ImportError(f"{name} is blocked: the review apps must not import it")


sys.meta_path.insert(0, NoHeavy())
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
print(json.dumps(out))
"""


def test_apps_main_flows_run_without_either(tmp_path):
    """Both review pages go through their main flow (part view with the classifier on its crops, decision, study
    viewer, sign-off) in an interpreter where importing torch or sklearn fails."""
    proc = subprocess.run([sys.executable, "-c", "import json, sys\n" + APPS_FLOW + REPORT, str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *_, flows, heavy = proc.stdout.strip().splitlines()
    out = json.loads(flows)
    assert out["qc"] == {"exceptions": [], "errors": [], "images": 3}
    assert out["med"] == {"exceptions": [], "errors": [], "images": 3}
    assert out["rows"] == 2
    assert json.loads(heavy) == HEAVY_NONE
    print(f"first page run: qc {out['qc_first_run_s']:.2f} s, med {out['med_first_run_s']:.2f} s")


def test_med_synth_and_preprocess_commands_run_without_either(tmp_path):
    code = (
        "from typer.testing import CliRunner\n"
        "from medical3d.cli import app\n"
        f"res = CliRunner().invoke(app, ['synth', {str(tmp_path / 'd')!r}, '--cases', '2', '--size', '24'])\n"
        "assert res.exit_code == 0, res.output\n"
        f"res = CliRunner().invoke(app, ['preprocess', {str(tmp_path / 'd' / 'studies')!r}, '--out', "
        f"{str(tmp_path / 'p')!r}, '--set', 'preprocess.resample.spacing=[8.0,8.0,8.0]', '--set', "
        "'preprocess.crop.size=[24,24,24]', '--set', 'runtime.threads=2'])\n"
        "assert res.exit_code == 0, res.output\n"
    )
    assert _heavy_loaded(code) == HEAVY_NONE
    assert len(list((tmp_path / "p").glob("*_preprocessed.nii.gz"))) == 2


def test_medical_batch_scoring_runs_without_either(tmp_path):
    run = make_run(tmp_path / "run")
    study = write(phantom(), tmp_path / "study.nii.gz")
    code = (
        "from pathlib import Path; from rich.console import Console\n"
        "from common.rundir import read_run_json; from medical3d.score import score\n"
        f"r = score(Path({str(run)!r}), [{str(study)!r}], Path({str(tmp_path / 's.csv')!r}),"
        f" console=Console(quiet=True), run=read_run_json({str(run)!r}))\n"
        "assert [x['status'] for x in r] == ['ok'], r\n"
    )
    assert _heavy_loaded(code) == HEAVY_NONE
