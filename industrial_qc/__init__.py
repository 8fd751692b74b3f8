"""industrial_qc: two-stage defect inspection (YOLOv5 detector + ResNet crop verifier) from data to the line.

Modules: synth (synthetic parts), data (dataset loading and validation), config, detector and classifier
(training, torch), crops/cropset (crop geometry), pipeline and verdict (ONNX inference, torch-free), train,
evaluate, line (the inspection loop), score (batch scoring), demo, cli.
"""
