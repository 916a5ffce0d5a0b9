"""``verify``: an ONNX model against PyTorch or another ONNX model, module call by module call."""
