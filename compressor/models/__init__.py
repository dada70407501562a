"""Architectures: teachers we can recognise and the student families we build."""
from compressor.models.registry import create_model, get_entry, list_models, register_model

__all__ = ["create_model", "get_entry", "list_models", "register_model"]
