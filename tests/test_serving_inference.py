"""The in-process micro-batcher, on the demo's real ONNX student and a real asyncio event loop."""
import asyncio

import numpy as np
import pytest
from prometheus_client import REGISTRY

from export.onnx import cpu_session
from serving.inference import BatchedModel, ModelUnavailable, softmax
from serving.settings import read_settings


def calls_and_rows() -> tuple[float, float]:
    return (REGISTRY.get_sample_value("dfcompress_classify_batch_size_count") or 0.0,
            REGISTRY.get_sample_value("dfcompress_classify_batch_size_sum") or 0.0)


def model_for(demo_run, tmp_path, **settings) -> BatchedModel:
    env = {"COMPRESSOR_MODEL": str(demo_run / "student.onnx"), "COMPRESSOR_JOBS_DIR": str(tmp_path / "jobs"),
           **{f"COMPRESSOR_{k.upper()}": str(v) for k, v in settings.items()}}
    return BatchedModel(read_settings(env))


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_get_their_own_answers(demo_run, tmp_path, batching):
    model = model_for(demo_run, tmp_path, batching=batching, max_batch_size=16)
    session = cpu_session(demo_run / "student.onnx")
    shape = [int(d) for d in session.get_inputs()[0].shape[1:]]
    rng = np.random.default_rng(0)
    requests = [rng.standard_normal((1 + i % 3, *shape)).astype(np.float32) for i in range(40)]
    expected = [softmax(session.run(None, {session.get_inputs()[0].name: r})[0]) for r in requests]
    calls_before, rows_before = calls_and_rows()

    async def everyone() -> list[np.ndarray]:
        return await asyncio.gather(*(model.predict(r) for r in requests))

    answers = asyncio.run(everyone())
    for got, want in zip(answers, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    calls, rows = (a - b for a, b in zip(calls_and_rows(), (calls_before, rows_before), strict=True))
    assert rows == sum(len(r) for r in requests)
    if batching:  # all 40 were waiting at once: a few calls of at most 16 rows, not 40
        assert calls <= 10, calls
    else:
        assert calls == 40


def test_a_request_for_another_input_shape_or_without_a_model_is_refused(demo_run, tmp_path):
    model = model_for(demo_run, tmp_path)
    with pytest.raises(Exception, match="does not fit the served model"):
        asyncio.run(model.predict(np.zeros((1, 3, 7, 7), np.float32)))
    missing = model_for(demo_run, tmp_path, model=tmp_path / "nothing.onnx")
    with pytest.raises(ModelUnavailable):
        asyncio.run(missing.predict(np.zeros((1, 1, 16, 16), np.float32)))


@pytest.mark.parametrize("setting, expected", [({}, "0"), ({"ort_spinning": "true"}, "1")])
def test_the_served_session_does_not_spin_between_calls_unless_asked(demo_run, tmp_path, setting, expected):
    """ONNX Runtime's threads spin-wait between calls by default: a served model under light traffic then keeps a
    core busy that the jobs beside it train on. The server's session turns it off; COMPRESSOR_ORT_SPINNING=true
    turns it back on."""
    model = model_for(demo_run, tmp_path, **setting)
    session = model._refresh()
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == expected
