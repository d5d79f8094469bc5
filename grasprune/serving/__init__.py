"""Serving formats: precision conversion and GGUF export."""
