"""fp16 and INT8 variants of an exported model.

INT8 is static QDQ quantisation calibrated on *generator samples*, so the
whole pipeline stays data-free: no real image is needed to pick the ranges.
Callers keep float32 inputs and outputs in both variants.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """Weights and activations in float16; inputs and outputs stay float32 for callers."""
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():  # one line per weight below fp16's range: the clamping is the point
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    _copy_metadata(model, converted, precision="fp16")
    onnx.save(converted, str(dst))
    return Path(dst)


class _ArrayReader:
    """Feeds calibration batches to ONNX Runtime's quantiser."""

    def __init__(self, input_name: str, samples: np.ndarray, batch_size: int = 32) -> None:
        self._batches = iter([{input_name: samples[i : i + batch_size]} for i in range(0, len(samples), batch_size)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - the quantiser reads once
        pass


def to_int8(src: str | Path, dst: str | Path, calibration: np.ndarray) -> Path:
    """Static INT8 (QDQ, per-channel weights) calibrated on `calibration`, N x C x H x W float32 inputs."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError("calibration samples must be a non-empty N x C x H x W array")
    src, dst = Path(src), Path(dst)
    prepared = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    try:
        quantize_static(
            str(prepared), str(dst), _ArrayReader(input_name, calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
    quantised = onnx.load(str(dst))
    _copy_metadata(model, quantised, precision="int8", calibration="generator samples")
    onnx.save(quantised, str(dst))
    return dst


def _copy_metadata(src: onnx.ModelProto, dst: onnx.ModelProto, **extra: str) -> None:
    existing = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in existing:
            dst.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in extra.items():
        dst.metadata_props.add(key=key, value=value)
