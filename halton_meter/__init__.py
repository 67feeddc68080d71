"""Halton Meter: a local, always-on meter for LLM API usage."""

__version__ = "0.3.0"
