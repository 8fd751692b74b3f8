import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from common.export import ExportError, export_onnx, quantize_int8, write_metadata
from common.inference import OnnxModel
from tests.common.toys import META, Small2D


class Small3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.body(x))


def test_export_round_trip_parity_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = Small2D().eval()
    report = export_onnx(model, torch.rand(1, 3, 64, 64), tmp_path / "m.onnx", META)
    assert report.max_rel_diff <= 1e-4 and report.opset >= 17
    m = OnnxModel(tmp_path / "m.onnx")
    assert m.metadata["labels"] == META["labels"]
    assert m.metadata["thresholds"] == {"fail": 0.6, "review": 0.3}
    assert m.metadata["temperature"] == pytest.approx(1.7)
    assert m.metadata["preprocessing"]["size"] == 64
    assert m.metadata["input_shape"] == ["batch", 3, 64, 64]
    assert m.metadata["input_dtype"] == "float32"
    assert "torch" in m.metadata["versions"] and m.metadata["data_fingerprint"] == "abc123"
    assert m.labels == META["labels"]
    # dynamic batch axis: any batch size runs and matches torch
    x = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(m.run(x.numpy()), ref, rtol=1e-4, atol=1e-5)
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version >= 17


def test_export_3d_and_metadata_update(tmp_path):
    report = export_onnx(Small3D(), torch.rand(1, 1, 16, 16, 16), tmp_path / "v.onnx", {"labels": ["neg", "pos"]})
    assert report.max_abs_diff < 1e-4
    write_metadata(tmp_path / "v.onnx", {"threshold": 0.42})
    m = OnnxModel(tmp_path / "v.onnx")
    assert m.metadata["threshold"] == 0.42 and m.metadata["labels"] == ["neg", "pos"]
    assert m.run(np.zeros((2, 1, 16, 16, 16), np.float32)).shape == (2, 2)


def test_export_restores_training_mode(tmp_path):
    model = Small2D().train()
    export_onnx(model, torch.rand(1, 3, 32, 32), tmp_path / "m.onnx", {})
    assert model.training


def test_parity_failure_is_reported(tmp_path):
    class Noisy(nn.Module):
        """Different output every call: ONNX cannot match it."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.fc(x) + (self.calls if not torch.jit.is_tracing() else 0)

    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(Noisy(), torch.rand(1, 4), tmp_path / "n.onnx", {})


def test_int8_copy_tracks_fp32_and_keeps_metadata(tmp_path):
    torch.manual_seed(0)
    model = Small2D().eval()
    export_onnx(model, torch.rand(1, 3, 32, 32), tmp_path / "m.onnx", META)
    gen = np.random.default_rng(0)
    calib = [gen.random((4, 3, 32, 32), dtype=np.float32) for _ in range(8)]
    quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", calib, {"precision": "int8"})
    fp32, int8 = OnnxModel(tmp_path / "m.onnx"), OnnxModel(tmp_path / "m.int8.onnx")
    assert int8.metadata["precision"] == "int8"
    assert int8.metadata["labels"] == META["labels"] and int8.metadata["thresholds"] == META["thresholds"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = gen.random((6, 3, 32, 32), dtype=np.float32)  # same range as the calibration data
    ref, got = fp32.run(x), int8.run(x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.05 * max(1.0, np.abs(ref).max())
    with pytest.raises(ExportError, match="m.onnx: no calibration data"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "x.onnx", [], {})


QUANTIZE_ON_SHARED_POOL_SCRIPT = """
import sys, numpy as np
from common.export import quantize_int8
from common.inference import OnnxModel, share_thread_pool
assert share_thread_pool()
fp32 = OnnxModel(sys.argv[1])  # the line's sessions, on the global pool
x = np.load(sys.argv[2])
quantize_int8(sys.argv[1], sys.argv[3], [x[:4], x[4:]], {"precision": "int8"})
ref, got = fp32.run(x), OnnxModel(sys.argv[3]).run(x)
assert np.abs(got - ref).max() <= 0.05 * max(1.0, np.abs(ref).max()), np.abs(got - ref).max()
"""


def test_int8_quantization_works_in_a_process_on_the_shared_pool(tmp_path):
    """onnxruntime's quantizer makes sessions with pools of their own, which it refuses once the process runs on
    the global pool (`qc inspect` earlier in the same Python session): quantize_int8 must still work there."""
    torch.manual_seed(0)
    export_onnx(Small2D().eval(), torch.rand(1, 3, 32, 32), tmp_path / "m.onnx", META)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32))
    proc = subprocess.run([sys.executable, "-c", QUANTIZE_ON_SHARED_POOL_SCRIPT, str(tmp_path / "m.onnx"),
                           str(tmp_path / "x.npy"), str(tmp_path / "m.int8.onnx")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert OnnxModel(tmp_path / "m.int8.onnx").metadata["precision"] == "int8"
