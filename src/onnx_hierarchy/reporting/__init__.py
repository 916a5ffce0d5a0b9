"""Seeing a model by module: the self-contained HTML ``report``."""
