"""The README's Python examples run as written (fresh process, CPU)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```",
                    (REPO / "README.md").read_text(encoding="utf-8"),
                    flags=re.DOTALL)


def test_readme_has_python_examples():
  assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
@pytest.mark.slow
def test_readme_python_example_runs(index, light_compile_env):
  proc = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=light_compile_env(dict(
                            os.environ, PYTHONPATH=str(REPO),
                            JAX_PLATFORMS="cpu")))
  assert proc.returncode == 0, proc.stderr[-3000:]
