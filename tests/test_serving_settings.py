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


def test_allowed_hosts_are_a_comma_separated_list_matched_without_the_port():
    from serving.guards import host_allowed

    s = read_settings({"COMPRESSOR_ALLOWED_HOSTS": " Example.org, [::1],10.0.0.7 "})
    assert s.allowed_hosts == ["example.org", "::1", "10.0.0.7"]
    assert read_settings({}).allowed_hosts == ["localhost", "127.0.0.1", "::1"]
    for header, ok in (("example.org", True), ("EXAMPLE.org:3000", True), ("[::1]:3000", True), ("10.0.0.7:80", True),
                       ("evil.example", False), ("example.org.evil.example", False), ("", False)):
        assert host_allowed(header, s.allowed_hosts) is ok, header
    assert host_allowed("anything:1", ["*"])
