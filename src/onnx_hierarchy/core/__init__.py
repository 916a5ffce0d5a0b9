"""The tagged model: reading and writing ONNX files, the module hierarchy, boundaries and traversal.

Neither torch nor ONNX Runtime is imported here: everything else stands on this layer.
"""
