"""experiments/planning.py: the dry run of the experiment binaries.

FLOP expectations are closed forms of the MLP's matmuls written out here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from compsum_jax.training import planning
from configs import adversarial_training as adv_presets
from configs import loss_comparison as lc_presets
from experiments import adversarial_training_lib as adv_lib
from experiments import planning as exp_planning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = 32
PIXELS = 64  # digits: 8 × 8 × 1
CLASSES = 10


def _mlp_smoke():
  config = lc_presets.get_config("smoke")
  config.model.name = "mlp"
  config.model.kwargs = {"hidden_sizes": (HIDDEN,)}
  return config


def test_dataset_shapes_subtract_the_validation_split():
  config = adv_presets.get_config("cifar10")
  shape = exp_planning.dataset_shape(config)
  assert shape.num_train == 50_000 - config.validation_size
  assert shape.input_shape == (32, 32, 3) and shape.num_classes == 10
  digits = exp_planning.dataset_shape(lc_presets.get_config("digits"))
  assert (digits.num_train, digits.num_test) == (1797 - 360, 360)
  config.validation_size = 60_000
  with pytest.raises(ValueError, match="validation_size=60000"):
    exp_planning.dataset_shape(config)


def test_forward_passes_model():
  # 3 per training pass, 2 per attack step, 1 for the clean target of a
  # KL or smooth-term attack.
  assert exp_planning.forward_passes("standard", 0) == 3
  assert exp_planning.forward_passes("pgd_at", 10) == 23
  assert exp_planning.forward_passes("trades", 10) == 27
  assert exp_planning.forward_passes("adv_comp_sum", 5) == 17
  assert exp_planning.forward_passes("trades", 10, attack_loss="ce") == 26
  with pytest.raises(ValueError, match="unknown method"):
    exp_planning.forward_passes("mart", 3)
  with pytest.raises(ValueError, match="attack_steps=-1"):
    exp_planning.forward_passes("pgd_at", -1)


def test_training_attack_steps_come_from_the_resolved_attack():
  config = adv_presets.get_config("cifar10")
  assert exp_planning.train_attack_config(config, "standard") is None
  assert exp_planning.attack_steps(None) == 0
  for method in ("pgd_at", "trades", "adv_comp_sum"):
    attack = exp_planning.train_attack_config(config, method)
    assert attack["num_steps"] == config.train_attack.num_steps == 10
    assert exp_planning.attack_steps(attack) == 10
  # TRADES' own recipe takes only num_steps and norm from the run.
  config.trades.recipe = "original"
  config.train_attack.num_steps = 7
  attack = exp_planning.train_attack_config(config, "trades")
  assert (attack["eps"], attack["num_steps"]) == (0.031, 7)
  assert exp_planning.attack_steps({"attack": "fgsm"}) == 1
  assert exp_planning.attack_steps(
      {"attack": "pgd", "num_steps": 4, "num_restarts": 3}) == 12
  with pytest.raises(ValueError, match="square"):
    exp_planning.attack_steps({"attack": "square", "num_queries": 10})


@pytest.mark.slow
def test_loss_comparison_plan_of_an_mlp_sweep(tmp_path):
  config = _mlp_smoke()
  config.sweep_mode = "vmap"
  result = exp_planning.plan(config, str(tmp_path), "loss_comparison",
                             log=lambda _: None)
  b = config.batch_size
  k = len(config.taus) * config.num_seeds
  # Forward: 2·(64·32 + 32·10) per example. Train step: forward, the weight
  # gradients of both layers and the hidden-layer gradient (no input
  # gradient): 2·B·(2·64·32 + 3·32·10).
  forward = 2 * (PIXELS * HIDDEN + HIDDEN * CLASSES)
  train = 2 * b * (2 * PIXELS * HIDDEN + 3 * HIDDEN * CLASSES)
  assert result["model"]["forward_flops_per_example"] == forward
  (method,) = result["methods"]
  assert method["analytical_flops_per_step"] == train
  assert method["pass_model_flops_per_step"] == 3 * forward * b
  programs = {p["name"]: p for p in result["programs"]}
  vmapped = programs[f"train step ({k} members, vmapped)"]
  assert vmapped["analytical_flops"] == k * train
  assert vmapped["temp_bytes"] > 0 and vmapped["argument_bytes"] > 0
  per_member = result["memory_per_member"]
  params = 4 * (PIXELS * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES)
  assert per_member["params"] == params
  assert per_member["batch"] == b * (4 * PIXELS + 4)
  for row in result["accelerators"]:
    assert row["fits"] and row["recommended"]["num_devices"] == 1
  # Time of the whole sweep at the stated MFU, from the closed forms.
  h100 = next(r for r in result["accelerators"]
              if r["accelerator"] == "H100-80GB")
  steps = result["schedule"]["total_steps"]
  eval_flops = sum(p["analytical_flops"] * p["calls_per_run"]
                   for p in result["programs"]
                   if p["name"] == "eval step (1 member)")
  expected = (k * train * steps + eval_flops) / (989.5e12 * 0.4)
  assert h100["run_seconds_bfloat16"] == pytest.approx(expected, rel=1e-9)
  with open(tmp_path / exp_planning.PLAN_JSON, encoding="utf-8") as f:
    assert json.load(f)["experiment"] == "loss_comparison"
  text = (tmp_path / exp_planning.PLAN_MD).read_text(encoding="utf-8")
  assert "PREDICTION" in text and "H200-141GB" in text


def test_attack_steps_add_two_forward_passes_each():
  # One more attack step = one forward and one input-gradient pass of the
  # MLP: 2·B·(64·32 + 32·10) twice. Traced only (no compilation).
  def step_flops(num_steps):
    config = adv_presets.get_config("smoke")
    config.train_attack.num_steps = num_steps
    shape = exp_planning.dataset_shape(config)
    ds = exp_planning.abstract_dataset(config, shape)
    experiment = exp_planning._adversarial_experiment(config, ds)  # pylint: disable=protected-access
    step, _, state = exp_planning._adversarial_programs(  # pylint: disable=protected-access
        experiment, adv_lib.PlannedRun("pgd_at", None, 0))
    batch = {"image": jax.ShapeDtypeStruct((config.batch_size, 8, 8, 1),
                                           jnp.float32),
             "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)}
    return planning.matmul_flops(step, state, batch).flops, config

  two, config = step_flops(2)
  five, _ = step_flops(5)
  forward = 2 * config.batch_size * (PIXELS * HIDDEN + HIDDEN * CLASSES)
  assert five - two == 3 * 2 * forward


@pytest.mark.slow
def test_adversarial_plan_of_the_smoke_preset(tmp_path):
  # Every method of the registry is planned from its declared passes; only
  # the costliest step is compiled (its memory bounds every run).
  config = adv_presets.get_config("smoke")
  result = exp_planning.plan(config, str(tmp_path), "adversarial_training",
                             log=lambda _: None)
  rows = {m["method"]: m for m in result["methods"]}
  assert set(rows) == set(config.methods)
  steps = config.train_attack.num_steps
  forward = 2 * (PIXELS * HIDDEN + HIDDEN * CLASSES)
  assert result["model"]["forward_flops_per_example"] == forward
  expected_passes = {"standard": 3, "pgd_at": 2 * steps + 3,
                     "trades": 1 + 2 * steps + 6,
                     "adv_comp_sum": 1 + 2 * steps + 6}
  for method, passes in expected_passes.items():
    assert rows[method]["passes_per_example"] == passes
    assert rows[method]["attack_steps"] == (0 if method == "standard"
                                            else steps)
  compiled = [m for m in rows.values() if m["xla_flops_per_step"]]
  assert len(compiled) == 1
  top = max(rows.values(), key=lambda m: m["analytical_flops_per_step"])
  assert compiled[0] is top
  assert result["sweep"]["num_runs"] == len(adv_lib.runs_of(config))
  steps_per_epoch = (1797 - 360 - config.validation_size) // config.batch_size
  assert result["schedule"]["steps_per_epoch"] == steps_per_epoch
  assert (tmp_path / exp_planning.PLAN_MD).exists()


def test_unknown_experiment_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="experiment must be one of"):
    exp_planning.plan(_mlp_smoke(), str(tmp_path), "bounds")


@pytest.mark.slow
def test_dry_run_flag_plans_and_does_not_train(tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.loss_comparison",
       "--config=configs/loss_comparison.py:synthetic_smoke",
       "--config.sweep_mode=sequential",
       "--dry_run", f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
      env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "# Plan (PREDICTION" in proc.stdout
  assert sorted(os.listdir(workdir)) == [exp_planning.PLAN_JSON,
                                         exp_planning.PLAN_MD]


@pytest.mark.slow
@pytest.mark.parametrize("module,preset,passes", [
    ("adversarial_training", "cifar10", 27),  # TRADES-style: 1 + 2·10 + 6
    ("loss_comparison", "cifar100", 3),
])
def test_paper_scale_dry_run_without_data(tmp_path, module, preset, passes):
  # The done-when commands: WRN-28-10 compiled on the host, no
  # dataset (TFDS_DATA_DIR points at an empty directory).
  workdir = tmp_path / "w"
  proc = subprocess.run(
      [sys.executable, "-m", f"experiments.{module}",
       f"--config=configs/{module}.py:{preset}", "--dry_run",
       f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=3000, check=False,
      env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               TFDS_DATA_DIR=str(tmp_path / "no_data")))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((workdir / exp_planning.PLAN_JSON).read_text())
  forward = result["model"]["forward_flops_per_example"]
  assert abs(forward / (2 * 5.2e9) - 1) < 0.10  # WRN-28-10, see test_planning
  batch = result["schedule"]["batch_size"]
  top = max(result["methods"], key=lambda m: m["passes_per_example"])
  assert top["passes_per_example"] == passes
  # The jaxpr count of the real step agrees with the pass model within 5 %.
  assert abs(top["analytical_flops_per_step"] / (passes * forward * batch)
             - 1) < 0.05
  assert any(p.get("peak_bytes", 0) > 2**30 for p in result["programs"])
  assert (workdir / exp_planning.PLAN_MD).exists()
