"""Writing hierarchy tags onto ONNX nodes: the torch-free tag writer and the torch module stacks."""
