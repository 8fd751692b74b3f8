"""Shared core of vision-suite: configs, runtime, training engine, metrics, export, ONNX inference, results.

Knows nothing of either vertical (industrial_qc, medical3d); they import it, never the other way round.
"""

import os

__version__ = "0.1.0"

# No data file runs code: Ultralytics loads .pt files with its safe loader (weights_only plus an allow-list of its
# own and torch's network classes) instead of a full unpickle. Set before ultralytics is imported; an explicit
# setting in the environment is kept. Our own torch.load calls pass weights_only=True.
os.environ.setdefault("ULTRALYTICS_SAFE_LOAD", "1")
