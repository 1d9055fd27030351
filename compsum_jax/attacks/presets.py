"""Named attack configurations (dicts of primitives) and the one registry.

A preset is a dict whose ``'attack'`` entry names an attack of :data:`ATTACKS`
('fgsm', 'pgd', 'apgd', 'apgd_targeted', 'fab_targeted', 'square') and whose
other entries are its keyword arguments, or a dict with a ``'cascade'`` entry
listing preset names run in order by
:func:`compsum_jax.attacks.robust_accuracy`.

Each entry of :data:`ATTACKS` is an :class:`AttackKind` that declares what the
attack is (gradient-free, takes a key, targeted, its norms, how many separate
runs it makes and how to make one of them); :func:`build_attack` returns an
:class:`Attack` carrying these properties, so nothing downstream recognises
an attack by its name. Adding an attack is one function plus one
:data:`ATTACKS` entry (and presets naming it). A PGD step
schedule is the primitive ``step_size_boundaries_and_scales`` ({step: scale},
string or int keys, as optax.piecewise_constant_schedule). Configs
choose attacks by name; :func:`build_attack` resolves the name here.

| preset | what |
|---|---|
| trades_train | PGD-10, ε 0.031, step 0.007, KL to the clean prediction, TRADES Gaussian start, last iterate (Zhang et al. 2019) |
| trades_eval | PGD-20, ε 0.031, step 0.003, CE, uniform start (TRADES evaluation) |
| eps8_255 | PGD-10, ε 8/255, step 2/255, CE, uniform start |
| pgd40_margin | PGD-40 on the margin driven by Adam, lr 0.1 ×0.1 at steps 20 and 30, ε 8/255: the early-stopping evaluator of Gowal et al. (2020) / Rice et al. (2020) |
| adv_comp_sum_train | PGD-10, ε 8/255, step 2/255, the smooth comp-sum term (docs/math.md (10.4)–(10.6)), uniform start, highest-term iterate |
| fgsm_8_255 | FGSM, ε 8/255 |
| apgd_ce | APGD-CE, 100 steps, ε 8/255 |
| apgd_dlr | APGD-DLR, 100 steps, ε 8/255 |
| apgd_t | APGD-T, 100 steps, 9 target classes, ε 8/255 |
| fab_t | FAB-T, 100 steps, 9 target classes, 1 restart each, α_max 0.1, η 1.05, β 0.9, ε 8/255 |
| square | Square ℓ∞, 5000 queries, p_init 0.8, AutoAttack's unscaled p schedule, ε 8/255 |
| aa_lite | cascade APGD-CE → APGD-T |
| aa_standard | cascade APGD-CE → APGD-T → FAB-T → Square: AutoAttack 'standard' ℓ∞ (Croce & Hein 2020) |
| aa_standard_like | cascade APGD-CE → APGD-T → Square: a cheaper option without FAB-T, not AutoAttack 'standard' |
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from compsum_jax.attacks import auto_pgd as apgd_lib
from compsum_jax.attacks import fab as fab_lib
from compsum_jax.attacks import projected_gradient as pgd_lib
from compsum_jax.attacks import square as square_lib

LogitsFn = Callable[[jax.Array], jax.Array]
# Attack callables built here: attack(logits_fn, x, labels, key) -> x_adv.
AttackFn = Callable[[LogitsFn, jax.Array, jax.Array, jax.Array], jax.Array]

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
    "fab_t": dict(attack="fab_targeted", eps=EPS_8_255, num_steps=100,
                  norm="linf", num_target_classes=9, num_restarts=1,
                  alpha_max=fab_lib.ALPHA_MAX, eta=fab_lib.ETA,
                  beta=fab_lib.BETA),
    "square": dict(attack="square", eps=EPS_8_255, num_queries=5000,
                   p_init=0.8, rescale_schedule=False),
    "aa_lite": dict(cascade=("apgd_ce", "apgd_t")),
    "aa_standard": dict(cascade=("apgd_ce", "apgd_t", "fab_t", "square")),
    "aa_standard_like": dict(cascade=("apgd_ce", "apgd_t", "square")),
}


@dataclasses.dataclass(frozen=True)
class AttackKind:
  """What an attack is, declared once in :data:`ATTACKS`.

  Attributes:
    label: short human name ('APGD', 'FAB-T', ...).
    fn: ``fn(logits_fn, x, labels, [key,] **config) -> x_adv``.
    takes_key: whether ``fn`` takes a PRNG key (its 4th argument).
    gradient_free: uses no gradient (its successes after gradient attacks
      flag gradient masking).
    targeted: attacks target classes.
    norms: the norms it supports.
    single_run: ``single_run(logits_fn, x, labels, key, run_index, **config)
      -> x_adv``, one of its separate runs (restart or target; ``run_index``
      one integer or one per example) with the outcome of the full call's
      run (it may stop once every point of the batch is misclassified), or
      None when it makes one run; the early-exit evaluation attacks with run
      j only the points that runs 0..j−1 left robust.
    runs: ``runs(num_classes, config) -> number of separate runs``.
    extra_arguments: config keys accepted beyond ``fn``'s signature.
  """
  label: str
  fn: Callable[..., jax.Array]
  takes_key: bool = True
  gradient_free: bool = False
  targeted: bool = False
  norms: tuple[str, ...] = ("linf", "l2")
  single_run: Callable[..., jax.Array] | None = None
  runs: Callable[[int, dict[str, Any]], int] = lambda n, cfg: 1
  extra_arguments: frozenset[str] = frozenset()

  def defaults(self) -> dict[str, Any]:
    """Keyword defaults of ``fn`` (the settings a config leaves out)."""
    return {k: p.default for k, p in inspect.signature(self.fn).parameters.items()
            if p.default is not inspect.Parameter.empty}

  def arguments(self) -> frozenset[str]:
    """Config keys the attack accepts."""
    names = set(inspect.signature(self.fn).parameters) - {
        "logits_fn", "x", "labels", "key"}
    return frozenset(names | self.extra_arguments | {"norm"})


def _apgd_single(logits_fn, x, labels, key, run_index, **cfg):
  return apgd_lib.apgd_run(logits_fn, x, labels, key, only_run=run_index,
                           stop_when_all_fooled=True, **cfg).x_adv


def _apgd_targeted_single(logits_fn, x, labels, key, run_index, **cfg):
  return apgd_lib.apgd_targeted_run(logits_fn, x, labels, key,
                                    only_run=run_index,
                                    stop_when_all_fooled=True, **cfg).x_adv


def _fab_targeted_single(logits_fn, x, labels, key, run_index, **cfg):
  res = fab_lib.fab_targeted_run(logits_fn, x, labels, key, only_run=run_index,
                                 **cfg)
  return fab_lib.within_eps(res, x, cfg["eps"])


ATTACKS: dict[str, AttackKind] = {
    "fgsm": AttackKind("FGSM", pgd_lib.fgsm, takes_key=False),
    "pgd": AttackKind(
        "PGD", pgd_lib.pgd,
        extra_arguments=frozenset({"step_size_boundaries_and_scales"})),
    "apgd": AttackKind(
        "APGD", apgd_lib.apgd, single_run=_apgd_single,
        runs=lambda n, cfg: apgd_lib.num_runs(
            n, num_restarts=cfg["num_restarts"])),
    "apgd_targeted": AttackKind(
        "APGD-T", apgd_lib.apgd_targeted, targeted=True,
        single_run=_apgd_targeted_single,
        runs=lambda n, cfg: apgd_lib.num_runs(
            n, num_restarts=cfg["num_restarts"],
            num_target_classes=cfg["num_target_classes"])),
    "fab_targeted": AttackKind(
        "FAB-T", fab_lib.fab_targeted, targeted=True, norms=("linf",),
        single_run=_fab_targeted_single,
        runs=lambda n, cfg: fab_lib.num_runs(
            n, num_target_classes=cfg["num_target_classes"],
            num_restarts=cfg["num_restarts"])),
    "square": AttackKind("Square", square_lib.square_attack,
                         gradient_free=True, norms=("linf",)),
}


def _format_value(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.6g}"
  if isinstance(v, dict):
    return "{" + ", ".join(f"{k}: {_format_value(x)}" for k, x in v.items()) + "}"
  return str(v)


@dataclasses.dataclass(frozen=True, eq=False)
class Attack:
  """A built attack: ``attack(logits_fn, x, labels, key) -> x_adv``.

  Carries its declared properties (from its :class:`AttackKind`) and its
  complete configuration (the preset's values, overrides and the function's
  defaults), so callers never look at its name.

  Attributes:
    kind_name: key of its :class:`AttackKind` in :data:`ATTACKS`.
    kind: the :class:`AttackKind`.
    config: every keyword setting, as primitives (schedules unbuilt).
  """
  kind_name: str
  kind: AttackKind
  config: dict[str, Any]

  @property
  def gradient_free(self) -> bool:
    return self.kind.gradient_free

  @property
  def takes_key(self) -> bool:
    return self.kind.takes_key

  @property
  def targeted(self) -> bool:
    return self.kind.targeted

  @property
  def eps(self) -> float:
    return self.config["eps"]

  @property
  def norm(self) -> str:
    return self.config.get("norm", "linf")

  def _call_kwargs(self) -> dict[str, Any]:
    cfg = dict(self.config)
    schedule = cfg.pop("step_size_boundaries_and_scales", None)
    if schedule is not None:
      cfg["step_size"] = optax.piecewise_constant_schedule(
          init_value=cfg["step_size"],
          boundaries_and_scales={int(k): float(v)
                                 for k, v in schedule.items()})
    if "norm" not in inspect.signature(self.kind.fn).parameters:
      cfg.pop("norm", None)
    return cfg

  def __call__(self, logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
               key: jax.Array) -> jax.Array:
    kwargs = self._call_kwargs()
    if not self.kind.takes_key:
      return self.kind.fn(logits_fn, x, labels, **kwargs)
    return self.kind.fn(logits_fn, x, labels, key, **kwargs)

  def num_runs(self, num_classes: int) -> int:
    """Separate runs (restarts × targets) against n classes."""
    if self.kind.single_run is None:
      return 1
    return int(self.kind.runs(num_classes, self.config))

  def run(self, logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
          key: jax.Array, run_index: int | jax.Array) -> jax.Array:
    """Run ``run_index`` alone (as inside the full call); see :class:`AttackKind`."""
    if self.kind.single_run is None:
      return self(logits_fn, x, labels, key)
    return self.kind.single_run(logits_fn, x, labels, key, run_index,
                                **self._call_kwargs())

  def describe(self) -> str:
    """Human-readable configuration, e.g. 'APGD-CE (num_steps=100, ...)'."""
    label = self.kind.label
    loss = self.config.get("loss")
    if self.kind_name in ("apgd", "pgd", "fgsm") and isinstance(loss, str):
      label = f"{label}-{loss.upper()}"
    settings = ", ".join(f"{k}={_format_value(v)}"
                         for k, v in self.config.items())
    return f"{label} ({settings})"


@dataclasses.dataclass(frozen=True, eq=False)
class Cascade:
  """Attacks run in order; every member attacks every point (in-graph).

  For exact counts with early exit use
  :func:`compsum_jax.attacks.robust_accuracy`.
  """
  names: tuple[str, ...]
  members: tuple[Attack | Cascade, ...]

  @property
  def gradient_free(self) -> bool:
    return all(m.gradient_free for m in self.members)

  @property
  def takes_key(self) -> bool:
    return any(m.takes_key for m in self.members)

  def __call__(self, logits_fn: LogitsFn, x: jax.Array, labels: jax.Array,
               key: jax.Array) -> jax.Array:
    out, done = x, jnp.zeros(labels.shape, bool)
    for i, member in enumerate(self.members):
      x_i = member(logits_fn, x, labels, jax.random.fold_in(key, i))
      fooled = jnp.argmax(logits_fn(x_i), axis=-1) != labels
      # First member that fools a point wins; the first output otherwise.
      take = (~done & fooled) | (i == 0)
      out = jnp.where(take.reshape((-1,) + (1,) * (x.ndim - 1)), x_i, out)
      done = done | fooled
    return out

  def describe(self) -> str:
    return " -> ".join(m.describe() for m in self.members)


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
  if cfg.get("attack") not in ATTACKS:
    raise ValueError(f"config 'attack' must be one of {sorted(ATTACKS)}, "
                     f"got {cfg.get('attack')!r}")
  for k, v in overrides.items():
    if v is not None:
      cfg[k] = v
  return cfg


def threat_model_of(config: dict[str, Any]) -> tuple[float, str]:
  """(ε, norm) of a resolved single-attack config."""
  if "eps" not in config:
    raise ValueError(f"attack config has no 'eps': {config!r}")
  return config["eps"], config.get("norm", "linf")


def accepted_arguments(config: str | dict[str, Any]) -> frozenset[str]:
  """Keyword arguments the attack of a single-attack config accepts."""
  return ATTACKS[resolve(config)["attack"]].arguments()


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


def build_attack(config: str | dict[str, Any], **overrides: Any
                 ) -> Attack | Cascade:
  """Builds ``attack(logits_fn, x, labels, key) -> x_adv`` from a preset.

  Args:
    config: a preset name of :data:`PRESETS` or a dict of the same form.
    **overrides: keyword values replacing the preset's (e.g. ``eps=0.3``,
      ``num_steps=20``); ``None`` values are ignored. For a cascade each
      override applies to the members that accept it (e.g. ``num_queries``
      to Square only) and must be accepted by at least one.

  Returns:
    An :class:`Attack` (or a :class:`Cascade`): a pure function of
    (logits_fn, x [B, ...], labels [B], key) returning the adversarial inputs
    [B, ...], carrying its properties and configuration; jit it with
    logits_fn closed over. For a cascade every member attacks every point and
    each point gets the first member's output that misclassifies it (else the
    first member's output).

  Raises:
    ValueError: unknown preset or attack, an argument the attack does not
      take, or a norm it does not support.
  """
  cfg = get_preset(config) if isinstance(config, str) else dict(config)
  if "cascade" in cfg:
    members = tuple(build_attack(m, **member_overrides(m, overrides))
                    for m in cfg["cascade"])
    check_overrides_used(cfg["cascade"], overrides)
    return Cascade(tuple(cfg["cascade"]), members)

  cfg = resolve(cfg, **overrides)
  kind_name = cfg.pop("attack")
  kind = ATTACKS[kind_name]
  unknown = sorted(k for k in cfg if k not in kind.arguments())
  if unknown:
    raise ValueError(f"attack {kind_name!r} takes no argument(s) {unknown} "
                     f"(config {cfg!r})")
  norm = cfg.get("norm", "linf")
  if norm not in kind.norms:
    only = " (l-infinity only)" if kind.norms == ("linf",) else ""
    raise ValueError(f"attack {kind_name!r} supports norm(s) {kind.norms}"
                     f"{only}, got norm={norm!r}")
  full = {k: v for k, v in kind.defaults().items()
          if k not in cfg and k not in ("target_labels", "only_run")}
  full.update(cfg)
  if "norm" not in full:
    full["norm"] = norm
  return Attack(kind_name, kind, full)
