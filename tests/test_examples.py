"""Every script in examples/ runs to completion."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    args = [sys.executable, str(script)]
    if script.name in ("evaluate_saved_model.py", "adversarial_training.py"):
        args.append(str(tmp_path))
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Accuracy Under Attack (%)" in result.stdout
