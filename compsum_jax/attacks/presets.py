"""Named attack configurations (dicts of primitives) and the one registry.

A preset is a dict whose ``'attack'`` entry names the attack function
('fgsm', 'pgd', 'apgd', 'apgd_targeted', 'square') and whose other entries are
its keyword arguments, or a dict with a ``'cascade'`` entry listing preset
names run in order by :func:`compsum_jax.attacks.robust_accuracy`. A PGD step
schedule is the primitive ``step_size_boundaries_and_scales`` ({step: scale},
string or int keys, as optax.piecewise_constant_schedule). Configs
choose attacks by name; :func:`build_attack` resolves the name here.

| preset | what |
|---|---|
| trades_train | PGD-10, ε 0.031, step 0.007, KL to the clean prediction, TRADES Gaussian start, last iterate (Zhang et al. 2019) |
| trades_eval | PGD-20, ε 0.031, step 0.003, CE, uniform start (TRADES evaluation) |
| eps8_255 | PGD-10, ε 8/255, step 2/255, CE, uniform start |
| pgd40_margin | PGD-40 on the margin driven by Adam, lr 0.1 ×0.1 at steps 20 and 30, ε 8/255: the early-stopping evaluator of Gowal et al. (2020) / Rice et al. (2020) |
| adv_comp_sum_train | PGD-10, ε 8/255, step 2/255, the smooth comp-sum term (notes §5.4), uniform start, highest-term iterate |
| fgsm_8_255 | FGSM, ε 8/255 |
| apgd_ce | APGD-CE, 100 steps, ε 8/255 |
| apgd_dlr | APGD-DLR, 100 steps, ε 8/255 |
| apgd_t | APGD-T, 100 steps, 9 target classes, ε 8/255 |
| square | Square ℓ∞, 5000 queries, p_init 0.8, ε 8/255 |
| aa_lite | cascade APGD-CE → APGD-T |
| aa_standard_like | cascade APGD-CE → APGD-T → Square (AutoAttack 'standard' ℓ∞ without FAB-T) |
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from compsum_jax.attacks import auto_pgd as apgd_lib
from compsum_jax.attacks import projected_gradient as pgd_lib
from compsum_jax.attacks import square as square_lib

# Attack callables built here: attack(logits_fn, x, labels, key) -> x_adv.
AttackFn = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array,
                     jax.Array], jax.Array]

EPS_8_255 = 8.0 / 255.0

PRESETS: dict[str, dict[str, Any]] = {
    "trades_train": dict(attack="pgd", eps=0.031, step_size=0.007,
                         num_steps=10, norm="linf", loss="kl",
                         random_start="gaussian", select="last"),
    "trades_eval": dict(attack="pgd", eps=0.031, step_size=0.003,
                        num_steps=20, norm="linf", loss="ce",
                        random_start="uniform"),
    "eps8_255": dict(attack="pgd", eps=EPS_8_255, step_size=2.0 / 255.0,
                     num_steps=10, norm="linf", loss="ce",
                     random_start="uniform"),
    "pgd40_margin": dict(attack="pgd", eps=EPS_8_255, step_size=0.1,
                         step_size_boundaries_and_scales={"20": 0.1, "30": 0.01},
                         num_steps=40, norm="linf", loss="margin",
                         optimizer="adam", random_start="uniform"),
    "adv_comp_sum_train": dict(attack="pgd", eps=EPS_8_255,
                               step_size=2.0 / 255.0, num_steps=10,
                               norm="linf", loss="smooth_comp_sum",
                               random_start="uniform", select="loss"),
    "fgsm_8_255": dict(attack="fgsm", eps=EPS_8_255, norm="linf", loss="ce"),
    "apgd_ce": dict(attack="apgd", eps=EPS_8_255, num_steps=100, norm="linf",
                    loss="ce"),
    "apgd_dlr": dict(attack="apgd", eps=EPS_8_255, num_steps=100,
                     norm="linf", loss="dlr"),
    "apgd_t": dict(attack="apgd_targeted", eps=EPS_8_255, num_steps=100,
                   norm="linf", num_target_classes=9),
    "square": dict(attack="square", eps=EPS_8_255, num_queries=5000,
                   p_init=0.8),
    "aa_lite": dict(cascade=("apgd_ce", "apgd_t")),
    "aa_standard_like": dict(cascade=("apgd_ce", "apgd_t", "square")),
}

_ATTACKS: dict[str, Callable[..., jax.Array]] = {
    "fgsm": pgd_lib.fgsm,
    "pgd": pgd_lib.pgd,
    "apgd": apgd_lib.apgd,
    "apgd_targeted": apgd_lib.apgd_targeted,
    "square": square_lib.square_attack,
}


def get_preset(name: str) -> dict[str, Any]:
  """A deep copy of the named preset (see the module table)."""
  if name not in PRESETS:
    raise ValueError(f"unknown attack preset {name!r}; known presets: "
                     f"{sorted(PRESETS)}")
  return copy.deepcopy(PRESETS[name])


def is_cascade(config: str | dict[str, Any]) -> bool:
  """Whether a preset name or config is a cascade of attacks."""
  if isinstance(config, str):
    config = get_preset(config)
  return "cascade" in config


def resolve(config: str | dict[str, Any], **overrides: Any
            ) -> dict[str, Any]:
  """A single-attack config from a preset name or dict, with overrides.

  ``None`` overrides are ignored, so callers can pass optional settings
  through. An override for a keyword the attack does not take raises.
  """
  cfg = get_preset(config) if isinstance(config, str) else dict(config)
  if "cascade" in cfg:
    raise ValueError(f"{config!r} is a cascade of {list(cfg['cascade'])}; "
                     f"resolve its members or use robust_accuracy")
  if cfg.get("attack") not in _ATTACKS:
    raise ValueError(f"config 'attack' must be one of {sorted(_ATTACKS)}, "
                     f"got {cfg.get('attack')!r}")
  for k, v in overrides.items():
    if v is not None:
      cfg[k] = v
  return cfg


def threat_model_of(config: dict[str, Any]) -> tuple[float, str]:
  """(ε, norm) of a resolved single-attack config (Square is always ℓ∞)."""
  if "eps" not in config:
    raise ValueError(f"attack config has no 'eps': {config!r}")
  return config["eps"], config.get("norm", "linf")


def accepted_arguments(config: str | dict[str, Any]) -> frozenset[str]:
  """Keyword arguments the attack of a single-attack config accepts."""
  cfg = get_preset(config) if isinstance(config, str) else dict(config)
  fn = _ATTACKS[resolve(cfg)["attack"]]
  names = set(inspect.signature(fn).parameters) - {
      "logits_fn", "x", "labels", "key"}
  if fn is square_lib.square_attack:
    names.add("norm")  # accepted, and must be 'linf'
  if fn is pgd_lib.pgd:
    names.add("step_size_boundaries_and_scales")
  return frozenset(names)


def member_overrides(member: str | dict[str, Any],
                     overrides: dict[str, Any]) -> dict[str, Any]:
  """The overrides that a cascade member accepts (others are skipped)."""
  if is_cascade(member):
    return dict(overrides)
  accepted = accepted_arguments(member)
  return {k: v for k, v in overrides.items() if k in accepted}


def check_overrides_used(members: Any, overrides: dict[str, Any]) -> None:
  """Raises if an override (not None) is accepted by no member of a cascade."""
  used: set[str] = set()
  for m in members:
    used |= set(member_overrides(m, overrides))
  unused = sorted(k for k, v in overrides.items()
                  if v is not None and k not in used)
  if unused:
    raise ValueError(f"override(s) {unused} are accepted by no attack of "
                     f"{list(members)}")


def build_attack(config: str | dict[str, Any], **overrides: Any) -> AttackFn:
  """Builds ``attack(logits_fn, x, labels, key) -> x_adv`` from a preset.

  Args:
    config: a preset name of :data:`PRESETS` or a dict of the same form.
    **overrides: keyword values replacing the preset's (e.g. ``eps=0.3``,
      ``num_steps=20``); ``None`` values are ignored. For a cascade each
      override applies to the members that accept it (e.g. ``num_queries``
      to Square only) and must be accepted by at least one.

  Returns:
    A pure function of (logits_fn, x [B, ...], labels [B], key) returning the
    adversarial inputs [B, ...]; jit it with logits_fn closed over. For a
    cascade every member attacks every point and each point gets the first
    member's output that misclassifies it (else the first member's output).
  """
  cfg = get_preset(config) if isinstance(config, str) else dict(config)
  if "cascade" in cfg:
    members = [build_attack(m, **member_overrides(m, overrides))
               for m in cfg["cascade"]]
    check_overrides_used(cfg["cascade"], overrides)

    def cascade(logits_fn, x, labels, key):
      out, done = x, jnp.zeros(labels.shape, bool)
      for i, member in enumerate(members):
        x_i = member(logits_fn, x, labels, jax.random.fold_in(key, i))
        fooled = jnp.argmax(logits_fn(x_i), axis=-1) != labels
        # First member that fools a point wins; the first output otherwise.
        take = (~done & fooled) | (i == 0)
        out = jnp.where(take.reshape((-1,) + (1,) * (x.ndim - 1)), x_i, out)
        done = done | fooled
      return out

    return cascade

  cfg = resolve(cfg, **overrides)
  fn = _ATTACKS[cfg.pop("attack")]
  schedule = cfg.pop("step_size_boundaries_and_scales", None)
  if schedule is not None:
    cfg["step_size"] = optax.piecewise_constant_schedule(
        init_value=cfg["step_size"],
        boundaries_and_scales={int(k): float(v) for k, v in schedule.items()})

  if fn is square_lib.square_attack:
    norm = cfg.pop("norm", "linf")
    if norm != "linf":
      raise ValueError(f"the square attack here is l-infinity only, got "
                       f"norm={norm!r}")
  accepted = inspect.signature(fn).parameters
  unknown = sorted(k for k in cfg if k not in accepted)
  if unknown:
    raise ValueError(f"attack {fn.__name__!r} takes no argument(s) {unknown} "
                     f"(config {cfg!r})")
  if fn is pgd_lib.fgsm:
    return lambda logits_fn, x, labels, key: fn(logits_fn, x, labels, **cfg)
  return lambda logits_fn, x, labels, key: fn(logits_fn, x, labels, key, **cfg)
