"""Run Python code in a child process: for tests that need a fresh interpreter (TF-Agents'
TF_USE_LEGACY_KERAS=1 before TensorFlow is imported, logical CPU devices set before first use,
an import that must fail)."""

import os
import subprocess
import sys
import textwrap


def run_python(code: str, timeout: int = 600, unset=(), **env) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) with this interpreter; ``env`` adds environment variables and
    ``unset`` removes some. TensorFlow's C++ logging is silenced. Returns the completed process
    with text stdout/stderr."""
    base = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**base, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
