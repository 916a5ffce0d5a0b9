"""Running ONNX models in ONNX Runtime under one session policy, generating inputs and comparing arrays."""
