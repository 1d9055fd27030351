"""Float64 NumPy references of the theory's closed forms, shared by tests.

Written from docs/math.md directly, independently of ``compsum_jax.theory``.
"""

import numpy as np


def transform(t, tau, n):
  """T_τ(t) from the four branches of docs/math.md (6.2), NumPy float64."""
  t = np.asarray(t, np.float64)
  if tau == 1.0:
    minus = np.where(t < 1, (1 - t) * np.log(np.where(t < 1, 1 - t, 1.0)), 0)
    return ((1 + t) * np.log1p(t) + minus) / 2
  if tau >= 2.0:
    return t / ((tau - 1) * n ** (tau - 1))
  e = 1.0 / (2 - tau)
  big_a = (((1 + t) ** e + (1 - t) ** e) / 2) ** (2 - tau)
  if tau < 1.0:
    return 2 ** (1 - tau) / (1 - tau) * (1 - big_a)
  return (big_a - 1) / ((tau - 1) * n ** (tau - 1))
