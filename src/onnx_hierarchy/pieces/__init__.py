"""Module-level surgery: cutting modules out of a tagged model as standalone ONNX models."""
