"""The house plan's import rules (shared/docs/architecture.md), checked on the AST."""

import ast
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# room -> compsum_jax rooms it may import (besides itself and `validation`).
ALLOWED = {
    "losses": set(),
    "theory": {"losses"},
    "attacks": {"losses"},
    "models": set(),
    "data": set(),
    "training": {"losses", "models", "data", "attacks"},
}
FORBIDDEN_THIRD_PARTY = {
    # Neither the library nor its tests may pull in TensorFlow or PyTorch.
    "compsum_jax": {"tensorflow", "torch", "experiments", "configs"},
}


def _imports(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text(), filename=str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def _room_files(room: str) -> list[pathlib.Path]:
  return sorted((ROOT / "compsum_jax" / room).rglob("*.py"))


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_rooms_import_only_what_the_plan_allows(room):
  files = _room_files(room)
  assert files, f"room compsum_jax/{room} has no modules"
  allowed = ALLOWED[room] | {room, "validation"}
  for path in files:
    for name in _imports(path):
      parts = name.split(".")
      if parts[0] in FORBIDDEN_THIRD_PARTY["compsum_jax"]:
        pytest.fail(f"{path.relative_to(ROOT)} imports {name}")
      if parts[0] == "compsum_jax" and len(parts) > 1:
        target = parts[1]
        # `from compsum_jax import x` lists x as compsum_jax.x.
        if target in ALLOWED or target == "validation":
          assert target in allowed, (
              f"{path.relative_to(ROOT)} (room {room}) imports {name}")


def test_configs_hold_primitives_only():
  for path in sorted((ROOT / "configs").glob("*.py")):
    for name in _imports(path):
      root = name.split(".")[0]
      assert root in {"ml_collections", "__future__", "typing", "configs"}, (
          f"{path.relative_to(ROOT)} imports {name}")


# Modules outside experiments/ that exercise the experiment layer itself
# (the binaries' end-to-end tests, tests of its command-line helpers, the
# benchmarks that run an experiment or reopen its workdir) and so may import
# `experiments`; everything else uses the library.
EXPERIMENT_CLIENTS = {
    "benchmarks/adversarial_comparison.py",
    "benchmarks/distributed.py",
    "benchmarks/loss_comparison.py",
    "benchmarks/plan_calibration.py",
    "benchmarks/smooth_weight_threshold.py",
    "tests/distributed_tfds_script.py",
    "tests/experiments_mesh_script.py",
    "tests/test_adversarial_experiment.py",
    "tests/test_adversarial_nu_threshold.py",
    "tests/test_adversarial_trust.py",
    "tests/test_cli.py",
    "tests/test_dataset_path_end_to_end.py",
    "tests/test_experiments_planning.py",
    "tests/test_loss_comparison.py",
    "tests/test_loss_comparison_trust.py",
    "tests/test_training_distributed.py",
}


def _notebook_imports(path: pathlib.Path) -> set[str]:
  """Imports of a notebook's code cells (IPython magics read as `pass`)."""
  cells = json.loads(path.read_text())["cells"]
  lines = [line for cell in cells if cell["cell_type"] == "code"
           for line in "".join(cell["source"]).splitlines()]
  code = "\n".join(
      line[:len(line) - len(line.lstrip())] + "pass"
      if line.lstrip().startswith(("%", "!")) else line for line in lines)
  tree = ast.parse(code, filename=str(path))
  return {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
          for alias in node.names} | {
              node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}


def test_nothing_outside_experiments_imports_experiments():
  """The library, configs, tests, benchmarks, tools and notebooks use the
  library, not the experiment binaries (except EXPERIMENT_CLIENTS)."""
  paths = sorted(ROOT.glob("*.py"))
  for top in ("compsum_jax", "configs", "tests", "benchmarks", "tools",
              "colab"):
    paths += sorted((ROOT / top).rglob("*.py"))
    paths += sorted((ROOT / top).rglob("*.ipynb"))
  checked = 0
  for path in paths:
    rel = path.relative_to(ROOT).as_posix()
    if rel in EXPERIMENT_CLIENTS or ".ipynb_checkpoints" in rel:
      continue
    names = (_notebook_imports(path) if path.suffix == ".ipynb"
             else _imports(path))
    checked += 1
    bad = sorted(n for n in names if n.split(".")[0] == "experiments")
    assert not bad, f"{rel} imports {bad}; use the library instead"
  assert checked > 50  # the walk did find the library, tests and notebooks
