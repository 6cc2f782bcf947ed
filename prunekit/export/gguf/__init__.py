"""GGUF export for llama.cpp and ollama (``llama``, ``deci`` or ``gemma3`` architecture)."""

from prunekit.export.gguf.encode import GGUF_TYPES
from prunekit.export.gguf.writer import GgufResult, check_gguf_target, export_gguf

__all__ = ["GGUF_TYPES", "GgufResult", "check_gguf_target", "export_gguf"]
