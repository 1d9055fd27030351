"""The Colab notebooks execute end to end and are committed without outputs.

Each notebook in ``colab/`` is run with ``nbclient`` in a kernel that runs this
interpreter (the project's virtualenv), with ``COMPSUM_NOTEBOOK_SMOKE=1`` so
that it uses its small parameters, the repository root as working directory and
a per-cell timeout. Because ``compsum_jax`` is importable here, each notebook's
install cell is skipped: no network is used. A failing cell raises
``nbclient.exceptions.CellExecutionError`` with the cell's traceback.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest
from conftest import without_light_compilation

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
COLAB_DIR = REPO_ROOT / "colab"
NOTEBOOKS = sorted(COLAB_DIR.glob("*.ipynb"))
KERNEL_NAME = "compsum-jax-test"
# Generous per-cell limit: a smoke cell takes seconds; only a hang reaches it.
CELL_TIMEOUT_S = 300
# Full-size runs (slow test): a cell may train for a few minutes on a CPU.
FULL_SIZE_CELL_TIMEOUT_S = 900
KERNEL_STARTUP_TIMEOUT_S = 180
# Notebooks left to the slow suite (`-m slow`) to keep the default suite
# within its time budget: 02 (bounds, gaps and the τ chosen by gradient
# descent) stays in the default run as the one executed notebook.
SLOW_NOTEBOOKS: frozenset[str] = frozenset({
    "01_comp_sum_losses.ipynb", "03_training_and_bounds.ipynb",
    "04_adversarial.ipynb"})
INSTALL_COMMAND = '%pip install -q "compsum_jax @ git+https://github.com/'
EXPECTED_NOTEBOOKS = ("01_comp_sum_losses.ipynb", "02_bounds_and_gaps.ipynb",
                      "03_training_and_bounds.ipynb", "04_adversarial.ipynb")


def _params():
  for path in NOTEBOOKS:
    marks = [pytest.mark.slow] if path.name in SLOW_NOTEBOOKS else []
    yield pytest.param(path, id=path.stem, marks=marks)


def _install_kernel(tmp_path_factory, patch: pytest.MonkeyPatch) -> str:
  """Writes a kernelspec running ``sys.executable``; found via JUPYTER_PATH."""
  root = tmp_path_factory.mktemp("jupyter")
  spec_dir = root / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                   "{connection_file}"],
          "display_name": "compsum_jax test kernel", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  patch.setenv("JUPYTER_PATH", str(root))
  patch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  # The default suite is CPU-only (a GPU, if any, is left alone).
  patch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
  return KERNEL_NAME


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, light_compile_env):
  """The test kernel, with COMPSUM_NOTEBOOK_SMOKE=1 in its environment.

  The kernel process inherits ``os.environ``, so the smoke switch and the
  JUPYTER_PATH are set there for the duration of the module.
  """
  patch = pytest.MonkeyPatch()
  name = _install_kernel(tmp_path_factory, patch)
  patch.setenv("COMPSUM_NOTEBOOK_SMOKE", "1")
  # Smoke cells run a few steps each: lighter compilation (tests/conftest.py).
  light = light_compile_env(os.environ)
  if "XLA_FLAGS" in light:
    patch.setenv("XLA_FLAGS", light["XLA_FLAGS"])
  yield name
  patch.undo()


@pytest.fixture(scope="module")
def full_size_kernel_env(tmp_path_factory):
  """The test kernel without the smoke switch (full-size runs)."""
  patch = pytest.MonkeyPatch()
  name = _install_kernel(tmp_path_factory, patch)
  patch.delenv("COMPSUM_NOTEBOOK_SMOKE", raising=False)
  # Full-size runs: run time dominates, so the default XLA:CPU optimisation.
  full = without_light_compilation(os.environ)
  if "XLA_FLAGS" in full:
    patch.setenv("XLA_FLAGS", full["XLA_FLAGS"])
  else:
    patch.delenv("XLA_FLAGS", raising=False)
  yield name
  patch.undo()


def _execute(path: pathlib.Path, kernel_name: str, timeout: int):
  """Runs every cell of the notebook at ``path``; returns the executed copy."""
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, kernel_name=kernel_name, timeout=timeout,
      startup_timeout=KERNEL_STARTUP_TIMEOUT_S,
      resources={"metadata": {"path": str(REPO_ROOT)}})
  client.execute()
  errors = [out for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if out.output_type == "error"]
  assert not errors, errors
  # The install cell was skipped: the package came from this checkout.
  install_outputs = nb.cells[1].outputs
  assert not install_outputs, install_outputs
  return nb


def test_all_notebooks_present():
  names = {p.name for p in NOTEBOOKS}
  missing = [n for n in EXPECTED_NOTEBOOKS if n not in names]
  assert not missing, f"missing notebooks in colab/: {missing}"


@pytest.mark.parametrize("path", list(_params()))
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type != "code":
      continue
    assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs"
    assert cell.get("execution_count") is None, (
        f"{path.name} cell {i} has an execution count")


@pytest.mark.parametrize("path", list(_params()))
def test_structure(path):
  """Markdown intro first, then the guarded install cell, then the smoke switch."""
  nb = nbformat.read(path, as_version=4)
  assert nb.cells[0].cell_type == "markdown"
  assert nb.cells[0].source.lstrip().startswith("# ")
  install = nb.cells[1]
  assert install.cell_type == "code"
  assert INSTALL_COMMAND in install.source
  assert 'find_spec("compsum_jax") is None' in install.source
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert "COMPSUM_NOTEBOOK_SMOKE" in code
  assert "jax.devices()" in code


@pytest.mark.parametrize("path", list(_params()))
def test_executes(path, kernel_env):
  """Smoke size: every cell runs, including the notebook's own assertions."""
  nb = _execute(path, kernel_env, CELL_TIMEOUT_S)
  smoke_lines = [out.text for out in nb.cells[2].outputs
                 if out.output_type == "stream"]
  assert any("smoke run: True" in text for text in smoke_lines), smoke_lines


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_executes_full_size(path, full_size_kernel_env):
  """Full size, as on Colab (minutes each on 2 CPU cores)."""
  nb = _execute(path, full_size_kernel_env, FULL_SIZE_CELL_TIMEOUT_S)
  smoke_lines = [out.text for out in nb.cells[2].outputs
                 if out.output_type == "stream"]
  assert any("smoke run: False" in text for text in smoke_lines), smoke_lines
