"""The house plan's import rules (shared/docs/architecture.md), checked on the AST."""

import ast
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
