"""``generate``: driving a with-past export as a runtime loop does, checked token by token against PyTorch."""
