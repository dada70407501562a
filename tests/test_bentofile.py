"""`bentoml build` accepts the bentofile and packages the three packages the service imports, and no tests."""
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_bentoml_build_succeeds(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True",
           "COMPRESSOR_JOBS_DIR": str(tmp_path / "jobs")}
    proc = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", "bentofile.yaml", "."], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    src = next((tmp_path / "home" / "bentos" / "dfcompress").glob("*/src"))
    for path in ("serving/service.py", "serving/worker.py", "serving/static/index.html", "serving/static/app.js",
                 "compressor/engine/run.py", "export/onnx.py"):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists() and not (src / "runs").exists()
    assert not (tmp_path / "jobs").exists()  # importing the service has no side effects on disk
