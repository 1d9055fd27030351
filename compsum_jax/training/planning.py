"""Planning a run before it starts: compiled cost, analytical FLOPs, accelerators.

Pure functions on shapes; nothing here needs data or an accelerator.

* :func:`step_cost`: XLA's own estimate of one compiled program, from
  ``jitted.lower(*abstract_args).compile()``: ``cost_analysis()`` (FLOPs,
  bytes accessed) and ``memory_analysis()`` (argument, output, temporary and
  aliased buffer bytes). The arguments are ``jax.ShapeDtypeStruct``s, so no
  array is allocated. Caveat: XLA's cost analysis counts the body of a
  ``while`` loop once, whatever its trip count (a ``fori_loop`` attack with
  10 steps is counted as one step), hence the analytical count next to it.
* :func:`matmul_flops` / :func:`forward_flops`: an analytical count of the
  multiply-adds of every ``conv_general_dilated`` and ``dot_general`` in the
  jaxpr of a function, times 2, independent of XLA. ``scan`` bodies are
  multiplied by their length, ``cond`` takes its most expensive branch,
  ``while`` bodies (unknown trip count) are counted once and reported.
* :data:`ACCELERATORS`: peak dense FLOP/s (bf16 and fp32) and memory per card
  of common accelerators, each with its source.
* :func:`fits`, :func:`predicted_seconds`, :func:`recommend`: whether a
  per-device footprint fits a card, the time of a FLOP count at a stated
  model-FLOPs utilisation (MFU), and the smallest number of cards with a
  member grouping that fits.

Memory model of a K-member sweep on n = m·d cards (m member groups, each
splitting the batch B over d cards), used by :func:`recommend`:

    bytes/card ≈ (K/m)·(state₁ + temp₁/d) + batch/d

with state₁ the bytes of one member's parameters, optimizer state and EMA,
temp₁ XLA's temporary bytes of the one-member step at the full batch B
(activations, which scale with the per-card batch) and batch the bytes of
one global batch. It is an approximation (XLA's temporaries are not exactly
linear in the batch); the planner compiles the configured grouping itself to
check it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any

# JAX preallocates this fraction of GPU memory by default
# (XLA_PYTHON_CLIENT_MEM_FRACTION); the rest is out of reach of the program.
DEFAULT_USABLE_FRACTION = 0.75
# Model-FLOPs utilisation assumed until a measured accelerator run exists.
DEFAULT_MFU = 0.40

# ------------------------------------------------------------ accelerators


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """One accelerator card (or TPU chip).

  Attributes:
    name: short name, e.g. 'H100-80GB'.
    memory_bytes: memory per card, bytes (the datasheet's GB/GiB figure).
    peak_bf16_flops: dense bf16 peak, FLOP/s (no sparsity).
    peak_fp32_flops: fp32 peak, FLOP/s (GPUs: plain FP32 pipes, no TF32);
      None where the vendor publishes none (TPUs).
    source: where the numbers come from.
  """

  name: str
  memory_bytes: int
  peak_bf16_flops: float
  peak_fp32_flops: float | None
  source: str

  def peak_flops(self, dtype: str) -> float | None:
    """Peak FLOP/s for compute dtype 'bfloat16' or 'float32'."""
    if dtype in ("bfloat16", "bf16"):
      return self.peak_bf16_flops
    if dtype in ("float32", "fp32"):
      return self.peak_fp32_flops
    raise ValueError(f"dtype must be 'bfloat16' or 'float32', got "
                     f"dtype={dtype!r}")


_GB = 10**9
_GIB = 2**30
_NVIDIA_A100 = ("NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/a100): "
                "BF16 tensor 312 TFLOP/s dense, FP32 19.5 TFLOP/s (SXM)")
_NVIDIA_H100 = ("NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/h100), "
                "SXM: BF16 tensor 1,979 TFLOP/s with sparsity = 989.5 dense, "
                "FP32 67 TFLOP/s, 80 GB HBM3")
ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator("A100-40GB", 40 * _GIB, 312e12, 19.5e12,
                _NVIDIA_A100 + ", 40 GB HBM2 (40,960 MiB)"),
    Accelerator("A100-80GB", 80 * _GIB, 312e12, 19.5e12,
                _NVIDIA_A100 + ", 80 GB HBM2e (81,920 MiB)"),
    Accelerator("H100-80GB", 80 * _GB, 989.5e12, 67e12, _NVIDIA_H100),
    Accelerator("H200-141GB", 141 * _GB, 989.5e12, 67e12,
                "NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/h200), "
                "SXM: BF16 1,979 TFLOP/s with sparsity = 989.5 dense, FP32 "
                "67 TFLOP/s, 141 GB HBM3e"),
    Accelerator("TPU-v4", 32 * _GIB, 275e12, None,
                "Google Cloud TPU v4 docs (cloud.google.com/tpu/docs/v4): "
                "275 TFLOP/s bf16 peak and 32 GiB HBM2 per chip; no fp32 "
                "peak published"),
    Accelerator("TPU-v5e", 16 * _GIB, 197e12, None,
                "Google Cloud TPU v5e docs (cloud.google.com/tpu/docs/v5e): "
                "197 TFLOP/s bf16 peak and 16 GiB HBM2 per chip; no fp32 "
                "peak published"),
)


def get_accelerator(name: str) -> Accelerator:
  """The entry of :data:`ACCELERATORS` called ``name``."""
  for acc in ACCELERATORS:
    if acc.name == name:
      return acc
  raise ValueError(f"unknown accelerator name={name!r}; known: "
                   f"{[a.name for a in ACCELERATORS]}")


# ----------------------------------------------------- XLA's compiled cost


@dataclasses.dataclass(frozen=True)
class StepCost:
  """XLA's estimate of one compiled program (per device).

  Attributes:
    flops: ``cost_analysis()['flops']`` (while-loop bodies counted once).
    bytes_accessed: ``cost_analysis()['bytes accessed']``.
    argument_bytes, output_bytes, temp_bytes, alias_bytes: from
      ``memory_analysis()``; alias bytes are outputs that reuse (donated)
      argument buffers.
    peak_bytes: argument + output + temp − alias, the program's footprint.
    compile_seconds: wall time of lower + compile.
  """

  flops: float
  bytes_accessed: float
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  peak_bytes: int
  compile_seconds: float


def _cost_dict(compiled: Any) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  return dict(cost or {})


def step_cost(jitted_fn: Any, *abstract_args: Any) -> StepCost:
  """Compiles ``jitted_fn`` for ``abstract_args`` and returns XLA's cost.

  Args:
    jitted_fn: a ``jax.jit``-ed function (anything with ``.lower``).
    *abstract_args: pytrees of ``jax.ShapeDtypeStruct`` (or arrays).

  Returns:
    A :class:`StepCost`.
  """
  if not hasattr(jitted_fn, "lower"):
    raise ValueError(f"step_cost needs a jax.jit-ed function with .lower, "
                     f"got {type(jitted_fn).__name__}")
  start = time.perf_counter()
  compiled = jitted_fn.lower(*abstract_args).compile()
  seconds = time.perf_counter() - start
  cost = _cost_dict(compiled)
  memory = compiled.memory_analysis()
  arg = int(getattr(memory, "argument_size_in_bytes", 0))
  out = int(getattr(memory, "output_size_in_bytes", 0))
  temp = int(getattr(memory, "temp_size_in_bytes", 0))
  alias = int(getattr(memory, "alias_size_in_bytes", 0))
  return StepCost(flops=float(cost.get("flops", 0.0)),
                  bytes_accessed=float(cost.get("bytes accessed", 0.0)),
                  argument_bytes=arg, output_bytes=out, temp_bytes=temp,
                  alias_bytes=alias, peak_bytes=arg + out + temp - alias,
                  compile_seconds=seconds)


def abstract(tree: PyTree) -> PyTree:
  """``jax.ShapeDtypeStruct`` of every array leaf (None leaves stay None)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x),
                                                     jax.numpy.result_type(x)),
                      tree)


def tree_bytes(tree: PyTree) -> int:
  """Σ over leaves of size × itemsize (arrays or ShapeDtypeStructs)."""
  return int(sum(math.prod(np.shape(x)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


# ------------------------------------------------ analytical matmul FLOPs


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Multiply-adds × 2 of the matmul-like ops of a jaxpr.

  Attributes:
    flops: total, 2·(conv MACs + dot MACs).
    conv_flops, dot_flops: the two parts.
    num_convs, num_dots: how many ops were counted (scan bodies × length).
    num_while_loops: ``while`` loops met (their bodies counted once: the
      count is a lower bound if this is > 0).
  """

  flops: float
  conv_flops: float
  dot_flops: float
  num_convs: int
  num_dots: int
  num_while_loops: int


def _conv_macs(eqn: Any) -> float:
  """MACs of one conv_general_dilated: |out| · |window| · C_in/groups.

  Per output element the kernel contracts its spatial window and its input
  features (already C_in / feature_group_count in the kernel shape). With
  lhs dilation (transposed convolutions of the backward pass) a fraction
  1/Π(lhs_dilation) of the window holds real inputs; only those are counted.
  """
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  dims = eqn.params["dimension_numbers"]
  rhs_spec = dims.rhs_spec  # (out feature, in feature, *spatial)
  window = math.prod(rhs[i] for i in rhs_spec[2:])
  in_features = rhs[rhs_spec[1]]
  dilation = math.prod(eqn.params.get("lhs_dilation") or (1,))
  return math.prod(out) * window * in_features / dilation


def _dot_macs(eqn: Any) -> float:
  """MACs of one dot_general: |lhs| · Π(rhs free dims)."""
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs_free = math.prod(rhs) // max(
      1, math.prod(rhs[i] for i in (*rhs_contract, *rhs_batch)))
  return math.prod(lhs) * rhs_free


def _sub_jaxprs(value: Any) -> list[Any]:
  """Jaxprs held in an equation parameter (ClosedJaxpr, Jaxpr, tuples)."""
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  if hasattr(value, "jaxpr") and hasattr(value, "consts"):  # ClosedJaxpr
    return [value.jaxpr]
  if hasattr(value, "eqns") and hasattr(value, "invars"):  # Jaxpr
    return [value]
  return []


def _walk(jaxpr: Any, scale: float, acc: dict[str, float]) -> None:
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      acc["conv"] += scale * _conv_macs(eqn)
      acc["num_convs"] += scale
    elif name == "dot_general":
      acc["dot"] += scale * _dot_macs(eqn)
      acc["num_dots"] += scale
    elif name == "scan":
      _walk(eqn.params["jaxpr"].jaxpr, scale * eqn.params["length"], acc)
    elif name == "cond":
      # The most expensive branch (only one runs).
      best = None
      for branch in eqn.params["branches"]:
        sub = dict.fromkeys(acc, 0.0)
        _walk(branch.jaxpr, scale, sub)
        if best is None or sub["conv"] + sub["dot"] > best["conv"] + best["dot"]:
          best = sub
      for k, v in (best or {}).items():
        acc[k] += v
    else:
      if name == "while":
        acc["num_while"] += 1
      for value in eqn.params.values():
        for sub in _sub_jaxprs(value):
          _walk(sub, scale, acc)


def matmul_flops(fn: Callable[..., Any], *abstract_args: Any,
                 **kwargs: Any) -> FlopCount:
  """2 × the multiply-adds of the convolutions and matmuls of ``fn``.

  Traces ``fn(*abstract_args, **kwargs)`` to a jaxpr (no compilation, no
  data) and sums :func:`_conv_macs` / :func:`_dot_macs` over its
  ``conv_general_dilated`` and ``dot_general`` equations, recursing into
  sub-jaxprs (jit, custom derivatives, remat; ``scan`` × length; ``cond``:
  its most expensive branch; ``while``: body once). Element-wise operations
  (activations, batch norm, optimizer updates) are not counted.

  Args:
    fn: a JAX-traceable function.
    *abstract_args: arrays or ``jax.ShapeDtypeStruct`` pytrees.
    **kwargs: static keyword arguments passed through to ``fn``.

  Returns:
    A :class:`FlopCount`.
  """
  closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*abstract_args)
  acc = {"conv": 0.0, "dot": 0.0, "num_convs": 0.0, "num_dots": 0.0,
         "num_while": 0.0}
  _walk(closed.jaxpr, 1.0, acc)
  return FlopCount(flops=2.0 * (acc["conv"] + acc["dot"]),
                   conv_flops=2.0 * acc["conv"], dot_flops=2.0 * acc["dot"],
                   num_convs=int(acc["num_convs"]),
                   num_dots=int(acc["num_dots"]),
                   num_while_loops=int(acc["num_while"]))


def forward_flops(model: Any, variables: PyTree, input_shape: Sequence[int],
                  batch_size: int = 1, dtype: Any = np.float32) -> FlopCount:
  """Analytical FLOPs of ``model.apply(variables, x, train=False)``.

  Args:
    model: a Flax module.
    variables: its variables (arrays or ShapeDtypeStructs, e.g. from
      ``jax.eval_shape(model.init, ...)``).
    input_shape: one example's shape, e.g. (32, 32, 3).
    batch_size: B; the count is for the whole batch.
    dtype: input dtype.

  Returns:
    A :class:`FlopCount` for B examples.
  """
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be an integer >= 1, got "
                     f"batch_size={batch_size!r}")
  x = jax.ShapeDtypeStruct((int(batch_size), *input_shape), dtype)
  return matmul_flops(lambda v, images: model.apply(v, images, train=False),
                      variables, x)


# ----------------------------------------------------- fit, time, advice


def fits(bytes_per_device: float, accelerator: Accelerator,
         usable_fraction: float = DEFAULT_USABLE_FRACTION) -> bool:
  """bytes_per_device ≤ usable_fraction · memory of one card."""
  _check_fraction(usable_fraction, "usable_fraction")
  if not bytes_per_device >= 0:
    raise ValueError(f"bytes_per_device must be >= 0, got {bytes_per_device!r}")
  return bytes_per_device <= usable_fraction * accelerator.memory_bytes


def _check_fraction(value: float, name: str) -> float:
  v = float(value)
  if not 0.0 < v <= 1.0:
    raise ValueError(f"{name} must lie in (0, 1], got {name}={value!r}")
  return v


def predicted_seconds(flops: float, accelerator: Accelerator, *,
                      dtype: str = "bfloat16", mfu: float = DEFAULT_MFU,
                      num_devices: int = 1) -> float | None:
  """t = flops / (num_devices · peak(dtype) · mfu); None if no peak known.

  Assumes perfect scaling over devices (no communication cost).
  """
  _check_fraction(mfu, "mfu")
  if not flops >= 0:
    raise ValueError(f"flops must be >= 0, got flops={flops!r}")
  if int(num_devices) != num_devices or num_devices < 1:
    raise ValueError(f"num_devices must be an integer >= 1, got "
                     f"num_devices={num_devices!r}")
  peak = accelerator.peak_flops(dtype)
  if peak is None:
    return None
  return float(flops) / (num_devices * peak * mfu)


@dataclasses.dataclass(frozen=True)
class MemberGrouping:
  """K members on n = member_shards · data_shards cards.

  Attributes:
    num_devices: n.
    member_shards: m member groups (m divides K).
    data_shards: d cards splitting each group's batch (d divides B).
    bytes_per_device: the memory model's footprint per card.
  """

  num_devices: int
  member_shards: int
  data_shards: int
  bytes_per_device: float


def grouping_bytes(*, num_members: int, member_shards: int, data_shards: int,
                   state_bytes_per_member: float,
                   temp_bytes_per_member: float, batch_bytes: float) -> float:
  """(K/m)·(state₁ + temp₁/d) + batch/d (module doc's memory model)."""
  if num_members % member_shards:
    raise ValueError(f"member_shards={member_shards} must divide "
                     f"num_members={num_members}")
  per_group = num_members // member_shards
  return per_group * (state_bytes_per_member +
                      temp_bytes_per_member / data_shards) + (
                          batch_bytes / data_shards)


def groupings(num_devices: int, num_members: int, batch_size: int
              ) -> list[tuple[int, int]]:
  """Every (m, d) with m·d = n, m | K and d | B (the experiments' meshes)."""
  out = []
  for m in range(1, num_devices + 1):
    if num_devices % m or num_members % m:
      continue
    d = num_devices // m
    if batch_size % d == 0:
      out.append((m, d))
  return out


def recommend(accelerator: Accelerator, *, num_members: int, batch_size: int,
              state_bytes_per_member: float, temp_bytes_per_member: float,
              batch_bytes: float, max_devices: int = 64,
              usable_fraction: float = DEFAULT_USABLE_FRACTION
              ) -> MemberGrouping | None:
  """The smallest card count (then the least memory) whose grouping fits.

  Args:
    accelerator: the card.
    num_members: K members trained together (1 for one run).
    batch_size: the global batch B.
    state_bytes_per_member, temp_bytes_per_member, batch_bytes: the memory
      model's inputs (module doc).
    max_devices: largest card count tried.
    usable_fraction: share of the card's memory the program may use.

  Returns:
    The :class:`MemberGrouping`, or None if nothing up to ``max_devices``
    fits.
  """
  for n in range(1, int(max_devices) + 1):
    best = None
    for m, d in groupings(n, num_members, batch_size):
      need = grouping_bytes(num_members=num_members, member_shards=m,
                            data_shards=d,
                            state_bytes_per_member=state_bytes_per_member,
                            temp_bytes_per_member=temp_bytes_per_member,
                            batch_bytes=batch_bytes)
      if fits(need, accelerator, usable_fraction) and (
          best is None or need < best.bytes_per_device):
        best = MemberGrouping(n, m, d, need)
    if best is not None:
      return best
  return None


def run_prediction(flops_per_step: float, steps: int,
                   accelerators: Sequence[Accelerator] = ACCELERATORS, *,
                   dtype: str = "bfloat16", mfu: float = DEFAULT_MFU,
                   num_devices: int = 1) -> Mapping[str, float | None]:
  """Predicted seconds of ``steps`` steps on each accelerator (by name)."""
  return {acc.name: predicted_seconds(flops_per_step * steps, acc,
                                      dtype=dtype, mfu=mfu,
                                      num_devices=num_devices)
          for acc in accelerators}


def human_bytes(n: float) -> str:
  """e.g. '1.50 GiB'."""
  for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20),
                      ("KiB", 2**10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{int(n)} B"


def human_seconds(s: float | None) -> str:
  """e.g. '3.2 h', '12 min', '4.1 s'; '–' for None."""
  if s is None:
    return "–"
  if s >= 86400:
    return f"{s / 86400:.1f} d"
  if s >= 3600:
    return f"{s / 3600:.1f} h"
  if s >= 60:
    return f"{s / 60:.0f} min"
  return f"{s:.3g} s"
