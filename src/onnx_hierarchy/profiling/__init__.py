"""Where ONNX Runtime spends its time, per module: ``profile``."""
