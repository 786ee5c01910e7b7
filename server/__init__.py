"""codeserve: an OpenAI-compatible inference server for code models with automatic model selection."""

__version__ = "0.1.0"
