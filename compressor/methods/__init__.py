"""Methods by name. Adding one means a file here and a line below; the loop never changes."""
from __future__ import annotations

from compressor.methods.base import Method, SynthBatch
from compressor.methods.default import DefaultMethod
from compressor.methods.dfad import DFAD

METHODS: dict[str, type[Method]] = {"default": DefaultMethod, "dfad": DFAD}


def create_method(name: str, teacher, student, generator, settings) -> Method:
    return METHODS[name](teacher, student, generator, settings)


__all__ = ["METHODS", "Method", "SynthBatch", "create_method"]
