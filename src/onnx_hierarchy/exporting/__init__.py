"""``export``: trace, convert, tag, save and check a Hugging Face model."""
