"""Every script in examples/ runs to completion."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
# what each script prints when it completes, and its smoke-run arguments (tiny budgets)
EXPECTED = {"robust_ppo.py": ("| SA-PPO |", ["--iterations", "1", "--episodes", "1"]),
            "rl_wrappers.py": ("tampered + RewardGuard: 100.0%", ["--episodes", "2"])}


SLOW = {"robust_ppo.py"}  # three PPO agents in a tf-keras process: ~50 s even with tiny budgets


@pytest.mark.parametrize("script", [
    pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW else p for p in EXAMPLES],
    ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    expected, extra = EXPECTED.get(script.name, ("Accuracy Under Attack (%)", []))
    args = [sys.executable, str(script), *extra]
    if script.name in ("evaluate_saved_model.py", "adversarial_training.py"):
        args.append(str(tmp_path))
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout, result.stdout[-3000:]
