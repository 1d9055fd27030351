"""Configs of the bounds binary: Γ_τ tables, verification, tightness, gaps, τ search.

Presets (``get_config(arg)``):

* ``default``: Γ_τ table for τ ∈ {0, .5, 1, 1.5, 2, 3} and n ∈ {2, 10, 100};
  10^5 random plus 64 × 300 adversarially searched (p, scores) pairs per
  (τ, n) for n ∈ {2, 3, 10}; tightness ratios at n ∈ {2, 10}; deterministic
  minimizability gaps of the constant-score family against τ and Λ. A few
  minutes on 2 CPU cores::

    python -m experiments.bounds --config=configs/bounds.py --workdir=/tmp/b

* ``smoke``: the same pipeline with tiny counts; seconds (used by the tests).

Any field can be overridden, e.g. ``--config.verify.num_pairs=1000000``.

Fields (primitives only):
  seed: PRNG seed of the random and adversarial searches.
  float64: compute in float64 (recommended; float32 rounding alone gives
    slacks of about −1e-6).
  plots: write PNG plots.
  gamma_table.taus / .num_classes / .surrogate_values: grid of Γ_τ(s).
  verify.taus / .num_classes: grid of the bound verification.
  verify.num_pairs: random (p, scores) pairs per (τ, n).
  verify.adversarial_starts / .adversarial_steps: multi-start Adam search.
  tightness.taus / .num_classes / .ts: grid of T_τ(t)/inf ΔC_τ.
  tightness.num_starts / .num_steps: search per t.
  gaps.taus / .score_bounds / .num_classes: grid of the deterministic gaps.
  gaps.zipf_exponent: label marginal π_y ∝ y^{−s} of the deterministic
    distribution whose constant-score family gap is reported.
  tau_search.num_classes / .score_bound / .spread / .zipf_exponent: the
    constant-score family in [−Λ, Λ]^n on n points with posteriors
    (1 − δ)π + δ·e_i, π_y ∝ y^{−s}.
  tau_search.estimation_error: ε, the surrogate estimation error.
  tau_search.tau_start / .step / .num_steps / .tau_min / .tau_max: projected
    (sub)gradient descent on τ (step halved when the derivative changes sign).
  tau_search.grid_size: points of the checking grid on [τ_min, τ_max].
"""

from __future__ import annotations

import ml_collections

PRESETS = ("default", "smoke")


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.float64 = True
  c.plots = True
  c.gamma_table = ml_collections.ConfigDict()
  c.gamma_table.taus = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
  c.gamma_table.num_classes = [2, 10, 100]
  c.gamma_table.surrogate_values = [1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5]
  c.verify = ml_collections.ConfigDict()
  c.verify.taus = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
  c.verify.num_classes = [2, 3, 10]
  c.verify.num_pairs = 100_000
  c.verify.adversarial_starts = 64
  c.verify.adversarial_steps = 300
  c.tightness = ml_collections.ConfigDict()
  c.tightness.taus = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
  c.tightness.num_classes = [2, 10]
  c.tightness.ts = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                    1.0]
  c.tightness.num_starts = 24
  c.tightness.num_steps = 300
  c.gaps = ml_collections.ConfigDict()
  c.gaps.taus = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
  c.gaps.score_bounds = [0.25, 0.5, 1.0, 2.0, 4.0]
  c.gaps.num_classes = 10
  c.gaps.zipf_exponent = 1.0
  c.tau_search = ml_collections.ConfigDict()
  c.tau_search.num_classes = 3
  c.tau_search.score_bound = 0.5
  c.tau_search.spread = 0.2
  c.tau_search.zipf_exponent = 1.0
  c.tau_search.estimation_error = 0.001
  c.tau_search.tau_start = 2.9
  c.tau_search.step = 20.0
  c.tau_search.num_steps = 40
  c.tau_search.tau_min = 0.0
  c.tau_search.tau_max = 3.0
  c.tau_search.grid_size = 301
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the preset ``arg`` ('default' when empty); see the module docstring.

  Raises:
    ValueError: unknown preset name.
  """
  name = arg or "default"
  if name not in PRESETS:
    raise ValueError(f"unknown bounds preset {name!r}; expected one of "
                     f"{PRESETS}")
  c = _base()
  if name == "smoke":
    # One class count everywhere: each n is a separate XLA compilation.
    c.gamma_table.num_classes = [2, 10]
    c.verify.taus = [0.0, 1.0, 2.0]
    c.verify.num_classes = [3]
    c.verify.num_pairs = 2000
    c.verify.adversarial_starts = 4
    c.verify.adversarial_steps = 20
    c.tightness.taus = [0.0, 1.0]
    c.tightness.num_classes = [3]
    c.tightness.ts = [0.1, 0.5, 1.0]
    c.tightness.num_starts = 2
    c.tightness.num_steps = 20
    c.gaps.taus = [0.0, 1.0, 2.0]
    c.gaps.score_bounds = [0.5, 2.0]
    c.gaps.num_classes = 3
    c.plots = True
  return c
