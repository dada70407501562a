"""Operator configuration comes from COMPRESSOR_* environment variables, typed and validated."""
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import read_settings


def test_defaults_work_without_any_variable():
    s = read_settings({})
    assert s.token is None and s.batching is True
    assert s.model == Path("runs/demo/student.onnx") and s.jobs_dir == Path("runs/jobs")


def test_variables_are_parsed_into_types():
    s = read_settings({"COMPRESSOR_TOKEN": "t0k", "COMPRESSOR_MAX_REQUEST_MB": "0.5", "COMPRESSOR_BATCHING": "false",
                       "COMPRESSOR_JOBS_DIR": "/srv/jobs", "COMPRESSOR_MAX_PIXELS": "1000"})
    assert s.token == "t0k" and s.max_request_bytes == 512 * 1024 and s.batching is False
    assert s.jobs_dir == Path("/srv/jobs") and s.max_pixels == 1000


def test_bad_values_are_refused_at_start():
    with pytest.raises(ValidationError):
        read_settings({"COMPRESSOR_MAX_REQUEST_MB": "-1"})
    with pytest.raises(ValidationError):
        read_settings({"COMPRESSOR_PROVIDER": "tpu"})
