"""Value checks of the theory's inputs (private; concrete values only).

Like :mod:`compsum_jax.validation`, each check runs when its argument is
concrete and is skipped for tracers (inside ``jit``/``vmap``/``grad``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compsum_jax import validation


def _first_entries(v: np.ndarray) -> str:
  v = np.asarray(v).reshape(-1)
  text = np.array2string(v[:6], precision=6)
  return text + (" ..." if v.size > 6 else "")


def check_finite(value: Any, name: str) -> None:
  """Raises ValueError naming the entries if a concrete ``value`` has NaN/±inf."""
  v = validation.concrete_value(value)
  if v is None:
    return
  v = np.asarray(v, dtype=np.float64)
  bad = ~np.isfinite(v)
  if np.any(bad):
    raise ValueError(f"{name} must be finite (no NaN or inf), got {name} "
                     f"entries {_first_entries(v[bad])}")


def check_score_bound(score_bound: Any, name: str = "score_bound") -> None:
  """Λ must be finite and > 0 (the box [−Λ, Λ]^n of a score-bounded family)."""
  validation.check_nonnegative(score_bound, name, allow_zero=False)
  v = validation.concrete_value(score_bound)
  if v is None:
    return
  v = np.asarray(v, dtype=np.float64)
  if np.any(np.isinf(v)):
    raise ValueError(f"{name} must be finite and > 0, got {name}="
                     f"{_first_entries(v[np.isinf(v)])}; for unbounded "
                     "scores use score_bound=None (the complete family)")


def check_scores_and_probs(scores: Any, probs: Any) -> None:
  """Finite scores (NaN/inf rejected) and finite probabilities."""
  check_finite(scores, "scores")
  check_finite(probs, "probs")
