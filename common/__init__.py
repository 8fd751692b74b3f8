"""Shared core of vision-suite: configs, runtime, training engine, metrics, export, ONNX inference, results.

Knows nothing of either vertical (industrial_qc, medical3d); they import it, never the other way round.
"""

__version__ = "0.1.0"
