"""Methods by name. Adding one means a file here and a line below; the loop never changes."""
from __future__ import annotations

from pathlib import Path

from compressor.methods.base import Method, SynthBatch
from compressor.methods.default import DefaultMethod
from compressor.methods.dfad import DFAD

METHODS: dict[str, type[Method]] = {"default": DefaultMethod, "dfad": DFAD}


def create_method(name: str, teacher, student, generator, settings, workdir: Path) -> Method:
    """`workdir` is the run folder: where a method keeps files (the synthetic pool)."""
    return METHODS[name](teacher, student, generator, settings, workdir)


__all__ = ["METHODS", "Method", "SynthBatch", "create_method"]
