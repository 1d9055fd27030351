"""Optimizer and learning-rate schedule from a config of primitives.

Config fields (a ``ml_collections.ConfigDict`` or a plain dict):

  name: 'sgd' | 'adamw'.
  learning_rate: peak learning rate η > 0.
  momentum: SGD momentum β ∈ [0, 1) (default 0.9); ignored by AdamW.
  nesterov: Nesterov momentum for SGD (default True).
  weight_decay: λ ≥ 0 (default 0). SGD: coupled L2, the gradient becomes
    g + λ·w before momentum (PyTorch ``SGD(weight_decay=λ)``). AdamW: decoupled,
    w ← w − η_t·λ·w (Loshchilov & Hutter, 2019; PyTorch ``AdamW``).
  weight_decay_mask: 'all' (default) or 'kernels' (decay only parameters with
    ≥ 2 dimensions, i.e. not biases nor batch-norm scales/offsets).
  schedule: 'cosine' | 'piecewise' | 'constant' (default 'cosine').
  warmup_steps: linear warm-up from 0 to η over this many steps (default 0).
  boundaries_and_scales: for 'piecewise', a dict or list of (boundary, scale)
    pairs; after ``boundary`` the rate is multiplied by ``scale`` (scales
    compound). A boundary that is an integer ≥ 1 is a step; a float in (0, 1)
    is a fraction of ``total_steps``. Dict keys may be strings (ConfigDict).
  grad_clip: optional max global gradient norm (None or 0: no clipping).
  b1, b2, eps: AdamW moments (defaults 0.9, 0.999, 1e-8).

Schedules (t = update index, W = warmup_steps, T = total_steps):
  constant:  η_t = η·min(1, t/W)
  cosine:    η_t = η·t/W for t < W, then η·½(1 + cos(π·(t − W)/(T − W)))
  piecewise: η_t = η·min(1, t/W)·Π_{b_i ≤ t} s_i
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

_DEFAULTS = {
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 0.0,
    "weight_decay_mask": "all",
    "schedule": "cosine",
    "warmup_steps": 0,
    "boundaries_and_scales": None,
    "grad_clip": None,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
}
_KNOWN = set(_DEFAULTS) | {"name", "learning_rate"}


def _as_dict(config: Any) -> dict[str, Any]:
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise ValueError(f"optimizer config must be a dict or ConfigDict, got "
                     f"{type(config).__name__}")
  unknown = set(config) - _KNOWN
  if unknown:
    raise ValueError(f"optimizer config has unknown fields {sorted(unknown)}; "
                     f"known fields are {sorted(_KNOWN)}")
  for field in ("name", "learning_rate"):
    if field not in config:
      raise ValueError(f"optimizer config needs field {field!r}")
  out = dict(_DEFAULTS)
  out.update({k: v for k, v in config.items() if v is not None or
              k in ("grad_clip", "boundaries_and_scales")})
  return out


def _check_number(value: Any, name: str, *, low: float, high: float = math.inf,
                  low_open: bool = False, high_open: bool = False) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number, got {name}={value!r}") from None
  bad_low = v <= low if low_open else v < low
  bad_high = v >= high if high_open else v > high
  if math.isnan(v) or bad_low or bad_high:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got "
                     f"{name}={value!r}")
  return v


def _piecewise_boundaries(boundaries_and_scales: Any,
                          total_steps: int) -> dict[int, float]:
  if not boundaries_and_scales:
    raise ValueError("schedule='piecewise' needs boundaries_and_scales, got "
                     f"{boundaries_and_scales!r}")
  items = (boundaries_and_scales.items()
           if isinstance(boundaries_and_scales, Mapping)
           else boundaries_and_scales)
  out = {}
  for pair in items:
    try:
      boundary, scale = pair
      b = float(boundary)
    except (TypeError, ValueError):
      raise ValueError(f"boundaries_and_scales entries must be (boundary, "
                       f"scale) pairs, got {pair!r}") from None
    if 0.0 < b < 1.0:
      step = int(round(b * total_steps))
    elif b >= 1.0 and b == int(b):
      step = int(b)
    else:
      raise ValueError(f"boundaries_and_scales boundary must be an integer "
                       f"step >= 1 or a fraction in (0, 1), got {boundary!r}")
    scale = _check_number(scale, "boundaries_and_scales scale", low=0.0)
    out[step] = out.get(step, 1.0) * scale
  return out


def make_schedule(config: Any, total_steps: int) -> optax.Schedule:
  """Learning-rate schedule t -> η_t from the config (module doc formulas).

  Args:
    config: optimizer config (see module doc).
    total_steps: number of updates of the whole run (T), ≥ 1.

  Returns:
    An optax schedule (jittable function of the int step).
  """
  cfg = _as_dict(config)
  if int(total_steps) != total_steps or total_steps < 1:
    raise ValueError(f"total_steps must be an integer >= 1, got "
                     f"total_steps={total_steps!r}")
  total_steps = int(total_steps)
  lr = _check_number(cfg["learning_rate"], "learning_rate", low=0.0,
                     low_open=True)
  warmup = cfg["warmup_steps"]
  if int(warmup) != warmup or not 0 <= warmup < total_steps:
    raise ValueError(f"warmup_steps must be an integer in [0, total_steps="
                     f"{total_steps}), got warmup_steps={warmup!r}")
  warmup = int(warmup)
  name = cfg["schedule"]
  if name == "cosine":
    if warmup == 0:
      # η_t = η·½(1 + cos(π t / T))
      return optax.cosine_decay_schedule(lr, decay_steps=total_steps)
    # η_t = η t/W, then η·½(1 + cos(π (t − W)/(T − W)))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup,
        decay_steps=total_steps, end_value=0.0)
  if name == "constant":
    base = optax.constant_schedule(lr)
  elif name == "piecewise":
    base = optax.piecewise_constant_schedule(
        lr, _piecewise_boundaries(cfg["boundaries_and_scales"], total_steps))
  else:
    raise ValueError(f"schedule must be 'cosine', 'piecewise' or 'constant', "
                     f"got schedule={name!r}")
  if warmup == 0:
    return base

  def warmed_up(step):
    # η_t = min(1, t/W)·base(t)
    ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / warmup)
    return ramp * base(step)

  return warmed_up


def _decay_mask(kind: str):
  if kind == "all":
    return None
  if kind == "kernels":
    return lambda params: jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)
  raise ValueError(f"weight_decay_mask must be 'all' or 'kernels', got "
                   f"weight_decay_mask={kind!r}")


def make_optimizer(config: Any, total_steps: int
                   ) -> optax.GradientTransformation:
  """Optimizer from a config of primitives (fields in the module doc).

  SGD: g ← clip(g); g ← g + λw; m ← βm + g; update = −η_t(g + βm) (Nesterov)
  or −η_t m. AdamW: optax.adamw with decoupled weight decay λ.

  Args:
    config: ConfigDict or dict with the fields listed in the module doc.
    total_steps: number of updates of the whole run (for the schedule).

  Returns:
    An ``optax.GradientTransformation``.

  Raises:
    ValueError: an unknown name/schedule/field or an out-of-range value.
  """
  cfg = _as_dict(config)
  schedule = make_schedule(cfg, total_steps)
  wd = _check_number(cfg["weight_decay"], "weight_decay", low=0.0)
  mask = _decay_mask(cfg["weight_decay_mask"])
  chain = []
  clip = cfg["grad_clip"]
  if clip:
    chain.append(optax.clip_by_global_norm(
        _check_number(clip, "grad_clip", low=0.0, low_open=True)))
  name = cfg["name"]
  if name == "sgd":
    momentum = _check_number(cfg["momentum"], "momentum", low=0.0, high=1.0,
                             high_open=True)
    if wd > 0:
      # g ← g + λ·w (coupled L2, before momentum)
      chain.append(optax.add_decayed_weights(wd, mask=mask))
    chain.append(optax.sgd(schedule, momentum=momentum or None,
                           nesterov=bool(cfg["nesterov"])))
  elif name == "adamw":
    b1 = _check_number(cfg["b1"], "b1", low=0.0, high=1.0, high_open=True)
    b2 = _check_number(cfg["b2"], "b2", low=0.0, high=1.0, high_open=True)
    eps = _check_number(cfg["eps"], "eps", low=0.0, low_open=True)
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                             weight_decay=wd, mask=mask))
  else:
    raise ValueError(f"optimizer name must be 'sgd' or 'adamw', got "
                     f"name={name!r}")
  return optax.chain(*chain) if len(chain) > 1 else chain[0]
