"""A config class from a checkpoint's own code; importing it leaves a mark where the test says."""

import os
from pathlib import Path

from transformers import PretrainedConfig

if "REMOTE_CODE_MARK" in os.environ:
    Path(os.environ["REMOTE_CODE_MARK"]).write_text("the repository's code ran")


class TinyConfig(PretrainedConfig):
    model_type = "tiny-remote"

    def __init__(self, hidden_size=8, vocab_size=10, **kwargs):
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        super().__init__(**kwargs)
