"""The distillation engine: `run` (compressor/engine/run.py) is the loop, read top to bottom."""
from compressor.engine.outcome import ChecksFailed, Interrupted, RunResult
from compressor.engine.run import run

__all__ = ["ChecksFailed", "Interrupted", "RunResult", "run"]
