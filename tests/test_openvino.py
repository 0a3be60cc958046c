"""The OpenVINO checks (tests/openvino_checks.py) in a pytest process of their own: OpenVINO's native thread
pools stay in a process once it is loaded, so the rest of the suite does not share a process with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'changenet[openvino]')")

HERE = Path(__file__).resolve().parent


def test_openvino_backend_in_its_own_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "run"),
         str(HERE / "openvino_checks.py")],
        capture_output=True, text=True, timeout=1200, cwd=HERE.parent, env={**os.environ})
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary
    print(summary)
