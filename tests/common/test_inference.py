import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from common.errors import InputError
from common.export import export_onnx
from common.inference import OnnxModel, available_providers, session_providers, softmax
from tests.common.toys import META, Small2D


def test_softmax_rows_sum_to_one_and_temperature_flattens():
    z = np.array([[2.0, 0.0, -1.0]])
    assert softmax(z).sum() == pytest.approx(1.0)
    assert softmax(z, 4.0).max() < softmax(z).max()


def test_onnx_model_errors_name_the_file(tmp_path):
    from common.errors import InputError

    with pytest.raises(InputError, match="not found"):
        OnnxModel(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="bad.onnx: not a loadable ONNX model"):
        OnnxModel(bad)


def test_importing_inference_does_not_import_torch():
    code = "import sys, common.inference, common.results, common.rundir, common.metrics, common.calibration; " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


SHARED_POOL_SCRIPT = """
import sys, numpy as np
from common.inference import OnnxModel, share_thread_pool, shared_pool_active
assert not shared_pool_active()
assert share_thread_pool() and shared_pool_active()
a, b = OnnxModel(sys.argv[1]), OnnxModel(sys.argv[1])  # two sessions on the one pool, as on the line
x = np.load(sys.argv[2])
np.save(sys.argv[3], a.run(x)); assert np.array_equal(a.run(x), b.run(x))
"""


def test_sessions_on_the_shared_pool_give_the_same_outputs(tmp_path):
    """`qc inspect` and `score` put their sessions on one process-wide pool; the numbers must not change."""
    torch.manual_seed(0)
    export_onnx(Small2D().eval(), torch.rand(1, 3, 64, 64), tmp_path / "m.onnx", META)
    x = np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", SHARED_POOL_SCRIPT, str(tmp_path / "m.onnx"), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), OnnxModel(tmp_path / "m.onnx").run(x), rtol=1e-5,
                               atol=1e-6)


# ---------------------------------------------------------------- providers: VSUITE_ORT_PROVIDERS, else available


@pytest.fixture
def model_path(tmp_path):
    """A small exported CNN."""
    export_onnx(Small2D().eval(), torch.rand(1, 3, 32, 32), tmp_path / "m.onnx", META)
    return tmp_path / "m.onnx"


def test_without_the_variable_sessions_take_the_available_providers(monkeypatch, model_path):
    monkeypatch.delenv("VSUITE_ORT_PROVIDERS", raising=False)
    have = ort.get_available_providers()
    assert session_providers() == available_providers()
    assert available_providers()[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in available_providers()) == ("CUDAExecutionProvider" in have)
    assert OnnxModel(model_path).session.get_providers() == available_providers()


def test_the_variable_chooses_the_providers_in_its_order(monkeypatch, model_path):
    monkeypatch.setenv("VSUITE_ORT_PROVIDERS", " CPUExecutionProvider , CPUExecutionProvider")
    assert session_providers() == ["CPUExecutionProvider"]
    assert OnnxModel(model_path).session.get_providers() == ["CPUExecutionProvider"]


def test_a_provider_this_onnxruntime_lacks_is_named_with_those_it_has(monkeypatch, model_path):
    monkeypatch.setenv("VSUITE_ORT_PROVIDERS", "NoSuchExecutionProvider,CPUExecutionProvider")
    with pytest.raises(InputError, match="VSUITE_ORT_PROVIDERS=.*NoSuchExecutionProvider not available.*"
                                         "available: .*CPUExecutionProvider"):
        session_providers()
    with pytest.raises(InputError, match="NoSuchExecutionProvider not available"):  # not "not a loadable model"
        OnnxModel(model_path)
    monkeypatch.setenv("VSUITE_ORT_PROVIDERS", " , ")
    with pytest.raises(InputError, match="names no provider; available: .*CPUExecutionProvider"):
        session_providers()
