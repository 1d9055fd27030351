"""ν*(h) logged at every evaluation of ADV-COMP-SUM runs (smoke preset)."""

import dataclasses
import warnings

import jax
import ml_collections
import pytest

from compsum_jax import data, training
from compsum_jax.training import smooth_weight
from configs import adversarial_training as cfgs
from experiments import adversarial_training_lib as lib

ACCURACY_FIELDS = ("clean_accuracy", "robust_pgd20", "robust_pgd40_margin",
                   "best_step", "final_step")


def _smoke_config():
  config = cfgs.get_config("smoke")
  config.methods = ("adv_comp_sum",)
  config.cascade = ()
  return config


def _best_state(experiment, run, workdir):
  template = training.init_train_state(
      experiment.model, experiment.optimizer, rng=run.seed,
      input_shape=experiment.dataset.input_shape,
      hparams=lib.run_hparams(experiment.config, run),
      ema=experiment.use_ema)
  state, _, meta = training.restore_best_checkpoint(
      workdir, template, "val_robust_accuracy")
  return state, meta


@pytest.mark.slow
def test_nu_threshold_is_logged_warns_and_changes_no_training_number(
    tmp_path):
  config = _smoke_config()
  experiment = lib.Experiment.create(config)
  (run,) = lib.runs_of(config)
  on_dir = str(tmp_path / "on")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    on = lib.train_and_evaluate(experiment, run, on_dir)
  assert on["status"] == "ok"

  # Logged at every evaluation, and the same values in final.json.
  evals = [m for m in training.read_metrics(on_dir) if m["split"] == "eval"]
  assert len(evals) == config.num_epochs // config.eval_every_epochs
  history = on["nu_threshold_history"]
  assert [h["step"] for h in history] == [m["step"] for m in evals]
  for h, m in zip(history, evals, strict=True):
    for field in lib.NU_THRESHOLD_FIELDS:
      assert h[field] == m[field]
    assert h["mean_sup_smooth_term"] > 0
    # τ = 1: ν* = E[z_y − mean z] / E[sup ‖v‖]
    assert h["nu_threshold"] == pytest.approx(
        h["mean_label_gap"] / h["mean_sup_smooth_term"], rel=1e-12)
    assert h["nu_exceeds_threshold"] == (on["nu"] >= h["nu_threshold"])
  fired = [w for w in caught
           if issubclass(w.category, lib.NuAboveThresholdWarning)]
  assert len(fired) == sum(h["nu_exceeds_threshold"] for h in history)
  assert on["val"]["nu_threshold"] == next(
      h["nu_threshold"] for h in history if h["step"] == on["best_step"])

  # The logged value is the estimate of the evaluated (EMA) parameters of
  # the stored state on the first num_examples validation examples.
  state, meta = _best_state(experiment, run, on_dir)
  split = experiment.dataset.validation
  limit = config.nu_threshold.num_examples
  direct = smooth_weight.smooth_term_weight_threshold(
      lib._eval_apply_fn(experiment),  # pylint: disable=protected-access
      data.to_float_images(split.images[:limit]), split.labels[:limit],
      jax.random.fold_in(jax.random.key(run.seed + 5), meta["epoch"]),
      tau=run.tau, eps=config.eps, norm=config.norm,
      step_size=config.train_attack.step_size,
      num_steps=config.nu_threshold.num_steps,
      batch_size=config.eval_batch_size,
      variables=(state.ema_params, state.batch_stats), example_offset=0)
  assert direct.nu_threshold == on["val"]["nu_threshold"]

  # ν far above ν*(h) warns; ν = 0 below a positive ν*(h) does not.
  huge = config.copy_and_resolve_references()
  huge.adv_comp_sum.nu = 1e6
  with pytest.warns(lib.NuAboveThresholdWarning,
                    match="constant classifier"):
    metrics = lib.nu_threshold_metrics(
        dataclasses.replace(experiment, config=huge), run, state,
        meta["epoch"])
  assert metrics["nu_threshold"] == on["val"]["nu_threshold"]
  if metrics["nu_threshold"] > 0:
    zero = config.copy_and_resolve_references()
    zero.adv_comp_sum.nu = 0.0
    with warnings.catch_warnings():
      warnings.simplefilter("error", lib.NuAboveThresholdWarning)
      lib.nu_threshold_metrics(dataclasses.replace(experiment, config=zero),
                               run, state, meta["epoch"])

  # Off: no ν* anywhere, and every training and test number is unchanged
  # (the estimate uses its own PRNG key and only evaluates).
  off_config = config.copy_and_resolve_references()
  off_config.nu_threshold.enabled = False
  off_dir = str(tmp_path / "off")
  off = lib.train_and_evaluate(
      dataclasses.replace(experiment, config=off_config), run, off_dir)
  assert "nu_threshold_history" not in off and "nu_threshold" not in off["val"]
  assert not any("nu_threshold" in m for m in training.read_metrics(off_dir))
  for field in ACCURACY_FIELDS:
    assert off[field] == on[field], field
  for field in ("val_accuracy", "val_robust_accuracy"):
    assert off["val"][field] == on["val"][field]
  on_train = [m for m in training.read_metrics(on_dir)
              if m["split"] == "train"]
  off_train = [m for m in training.read_metrics(off_dir)
               if m["split"] == "train"]
  assert [m["loss"] for m in off_train] == [m["loss"] for m in on_train]


def test_methods_without_the_smooth_term_get_no_estimate():
  config = _smoke_config()
  run = lib.PlannedRun("trades", None, 0)
  assert lib.nu_threshold_record(config, run, "/nonexistent") == {}
  off = config.copy_and_resolve_references()
  off.nu_threshold.enabled = False
  assert lib.nu_threshold_record(off, lib.PlannedRun("adv_comp_sum", 1.0, 0),
                                 "/nonexistent") == {}


@pytest.mark.parametrize("field,value,match", [
    ("enabled", "yes", "nu_threshold.enabled='yes'"),
    ("num_steps", 0, "nu_threshold.num_steps=0"),
    ("num_examples", -3, "nu_threshold.num_examples=-3"),
])
def test_bad_nu_threshold_settings_raise(field, value, match):
  config = _smoke_config()
  section = config.nu_threshold.to_dict()
  section[field] = value  # past the ConfigDict's own type check
  config.nu_threshold = ml_collections.ConfigDict(section)
  with pytest.raises(ValueError, match=match):
    lib.check_config(config)


def test_nu_threshold_is_on_in_every_preset():
  for name in cfgs.PRESETS:
    config = cfgs.get_config(name)
    lib.check_nu_threshold_config(config)
    assert config.nu_threshold.enabled is True
