"""The Hugging Face side: resolving a MODEL argument, building the PyTorch model, its inputs and module tree."""
