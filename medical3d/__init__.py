"""medical3d: CT/MRI study classification, from studies on disk to calibrated verdicts.

read (``io``) -> validate -> orient -> N4 (MRI) -> resample -> crop/pad -> normalize (``preprocess``) ->
3D CNN (``models``, trained by ``pipeline``) -> ONNX -> scores (``score``, no torch).

Importing the package is light: no torch, no SimpleITK. Each module imports what it needs.
"""
