"""medical3d: CT/MRI study classification, from studies on disk to calibrated verdicts.

read (``io``) -> validate -> orient -> N4 (MRI) -> resample -> crop/pad -> normalize (``preprocess``) ->
3D CNN (``models``, trained by ``train``) -> ONNX -> one record per study (``pipeline``, no torch) -> verdict
(``verdict``); ``score`` scores batches, ``evaluate`` a run on a manifest split.

Importing the package is light: no torch, no SimpleITK. Each module imports what it needs.
"""
