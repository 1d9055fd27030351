"""Tests of the loss-comparison experiment.

Expected values are computed independently of the code under test: a plain
optax cross-entropy training loop for τ = 1, NumPy float64 closed forms of the
conditional risks and of Γ_τ (SciPy root finding, in
tests/test_theory_empirical.py) for the bound check, direct
``model.apply`` + NumPy argmax for the reported accuracies, and NumPy
mean/std for the per-τ statistics.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_theory_empirical import np_gamma

from compsum_jax import data as data_lib
from compsum_jax import training
from configs import loss_comparison as presets
from experiments import common
from experiments import loss_comparison_lib as lib

# ------------------------------------------------------------------ configs


def test_every_preset_validates():
  for name in presets.PRESETS:
    config = presets.get_config(name)
    lib.validate_config(config)
    assert len(lib.config_taus(config)) >= 1


def test_default_preset_is_digits_with_default_grid():
  config = presets.get_config()
  assert config.dataset == "digits"
  assert lib.config_taus(config) == (0.0, 0.5, 1.0, 1.5, 2.0)
  assert config.num_seeds == 3


def test_unknown_preset():
  with pytest.raises(ValueError, match="preset"):
    presets.get_config("imagenet")


@pytest.mark.parametrize("field, value, pattern", [
    ("dataset", "imagenet", r"config\.dataset"),
    ("taus", (0.0, -1.0), r"config\.taus"),
    ("taus", (), r"config\.taus"),
    ("taus", (1.0, 1.0), r"config\.taus"),
    ("label_noise.rate", 1.0, r"config\.label_noise\.rate"),
    ("label_noise.rate", -0.1, r"config\.label_noise\.rate"),
    ("label_noise.kind", "pairs", r"config\.label_noise\.kind"),
    ("num_seeds", 0, r"config\.num_seeds"),
    ("num_epochs", 0, r"config\.num_epochs"),
    ("batch_size", 0, r"config\.batch_size"),
    ("sweep_mode", "parallel", r"config\.sweep_mode"),
    ("model.name", "resnet1000", r"config\.model\.name"),
    ("optimizer.learning_rate", 0.0, r"config\.optimizer\.learning_rate"),
    ("companion", "nope", r"config\.companion"),
    ("cpu_devices", 0, r"config\.cpu_devices"),
    ("member_shards", 0, r"config\.member_shards"),
])
def test_bad_config_names_the_field(field, value, pattern):
  config = presets.get_config("smoke")
  parent = config
  *path, last = field.split(".")
  for part in path:
    parent = parent[part]
  with parent.ignore_type():
    parent[last] = value
  with pytest.raises(ValueError, match=pattern):
    lib.validate_config(config)


_CPU_DEVICES_SCRIPT = """
from experiments import common
common.configure_cpu_devices({"cpu_devices": None})  # None: no change
common.configure_cpu_devices({"cpu_devices": 3})
import jax
print(jax.device_count())
try:
  common.configure_cpu_devices({"cpu_devices": 2})
except ValueError as error:
  print(error)
"""


@pytest.mark.slow
def test_cpu_devices_creates_host_devices_before_jax_starts():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu",
             PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
  proc = subprocess.run([sys.executable, "-c", _CPU_DEVICES_SCRIPT], env=env,
                        capture_output=True, text=True, timeout=120,
                        cwd=env["PYTHONPATH"], check=True)
  count, error = proc.stdout.strip().splitlines()[-2:]
  assert count == "3"
  assert "config.cpu_devices=2" in error and "before JAX" in error


def test_unknown_dataset_option_names_the_field():
  config = presets.get_config("synthetic_smoke")
  config.dataset_kwargs.num_clases = 3  # typo
  with pytest.raises(ValueError, match="num_clases"):
    lib.build_sweep(config)


def test_bound_check_needs_known_posteriors():
  config = presets.get_config("smoke")
  config.bound_check = True
  with pytest.raises(ValueError, match=r"config\.bound_check"):
    lib.validate_config(config)


# ------------------------------------------------------------ member setup


def test_member_grid_is_tau_major_with_shared_seeds():
  members = common.member_grid({"tau": (0.0, 1.0, 2.0)}, 2, 10)
  assert [(m.hparams["tau"], m.seed) for m in members] == [
      (0.0, 10), (0.0, 11), (1.0, 10), (1.0, 11), (2.0, 10), (2.0, 11)]
  assert [m.index for m in members] == list(range(6))


@pytest.mark.slow
def test_init_states_equal_init_train_state():
  config = presets.get_config("smoke")
  dataset = common.load_data(config)
  model = common.build_model(config, dataset)
  optimizer = optax.sgd(0.1, momentum=0.9)
  members = common.member_grid({"tau": (0.5, 2.0)}, 2, 3)
  stacked = common.init_states(model, optimizer, members,
                               dataset.input_shape, stacked=True)
  # Compare one member (the last: τ = 2, seed 4) and check that the members
  # differ as they should.
  member = members[-1]
  reference = training.init_train_state(
      model, optimizer, rng=member.seed, input_shape=dataset.input_shape,
      hparams=member.hparams)
  ours = jax.tree.map(lambda x: x[-1], stacked)
  assert jax.tree.structure(ours) == jax.tree.structure(reference)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  kernels = [x for x in jax.tree.leaves(stacked.params) if x.ndim >= 3][0]
  np.testing.assert_array_equal(kernels[0], kernels[2])  # same seed, τ differs
  assert not np.array_equal(kernels[0], kernels[1])  # different seeds
  np.testing.assert_array_equal(stacked.hparams["tau"], [0.5, 0.5, 2.0, 2.0])
  # Further groups and single members reuse the compiled initialiser.
  init = training.state._init_state  # pylint: disable=protected-access
  compiled = init._cache_size()  # pylint: disable=protected-access
  common.init_states(model, optimizer, members[2:], dataset.input_shape,
                     stacked=True)
  single = common.init_states(model, optimizer, members[1:2],
                              dataset.input_shape, stacked=False)
  assert init._cache_size() == compiled  # pylint: disable=protected-access
  assert np.shape(single.step) == ()
  np.testing.assert_array_equal(
      jax.tree.leaves(single.params)[0],
      jax.tree.leaves(jax.tree.map(lambda x: x[1], stacked.params))[0])


# ------------------------------------------------------- τ = 1 equals optax


def _tiny_config(taus, mode):
  config = presets.get_config("smoke")
  config.taus = taus
  config.num_seeds = 1
  config.seed = 7
  config.optimizer.weight_decay = 0.0
  config.sweep_mode = mode
  config.eval_every_epochs = 2
  return config


def _plain_optax_ce_params(sweep, seed):
  """Plain optax cross-entropy training with the same seed and batches."""
  config = sweep.config
  model = sweep.model
  init_key, _ = jax.random.split(jax.random.key(seed))
  params = model.init(init_key, jnp.zeros((1, *sweep.dataset.input_shape)),
                      train=False)["params"]
  schedule = optax.cosine_decay_schedule(config.optimizer.learning_rate,
                                         sweep.total_steps)
  optimizer = optax.sgd(schedule, momentum=config.optimizer.momentum,
                        nesterov=True)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(p):
      logits = model.apply({"params": p}, images, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for epoch in range(config.num_epochs):
    for batch in data_lib.train_batches(sweep.dataset.train, config.batch_size,
                                        seed=config.data_seed, epoch=epoch):
      params, opt_state = step(params, opt_state, batch["image"],
                               batch["label"])
  return params


@pytest.mark.parametrize("mode", ["vmap", "sequential"])
@pytest.mark.slow
def test_tau_one_equals_plain_optax_cross_entropy(mode, tmp_path):
  # vmap: τ = 1 is member 0 of a 2-member vmapped run (with τ = 2).
  taus = (1.0, 2.0) if mode == "vmap" else (1.0,)
  sweep = lib.build_sweep(_tiny_config(taus, mode))
  stacked = mode == "vmap"
  group = sweep.members if stacked else sweep.members[:1]
  result = lib.train_group(sweep, group, str(tmp_path / "run"),
                           stacked=stacked)
  ours = result.state.params
  if stacked:
    ours = jax.tree.map(lambda x: x[0], ours)
  reference = _plain_optax_ce_params(sweep, seed=7)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5,
                               atol=2e-6)
  # And training moved the parameters (the comparison is not vacuous).
  init = common.init_states(sweep.model, sweep.optimizer, group[:1],
                            sweep.dataset.input_shape, stacked=False).params
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(ours),
                              strict=True))
  assert moved > 1e-3


# ------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("smoke"))
  config = presets.get_config("smoke")
  results, paths = lib.run(config, workdir, log=lambda s: None)
  return config, workdir, results, paths


def test_smoke_writes_documented_files(smoke_run):
  _, workdir, results, paths = smoke_run
  for name in ("results", "table", "accuracy_plot", "curves_plot"):
    assert os.path.getsize(paths[name]) > 0, name
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    on_disk = json.load(f)
  assert on_disk == json.loads(json.dumps(common.to_jsonable(results)))
  assert set(on_disk) >= {"config", "dataset", "sweep", "per_tau", "members",
                          "bound_check", "files"}
  assert on_disk["config"]["taus"] == [0.0, 1.0, 2.0]
  assert on_disk["sweep"]["mode"] == "vmap"
  assert on_disk["sweep"]["num_devices"] == jax.device_count()
  if jax.device_count() == 1:
    assert on_disk["sweep"]["mesh"] == {"members": 1, "data": 1}
  assert on_disk["bound_check"]["applicable"] is False
  for row in on_disk["per_tau"]:
    for key in ("test_accuracy", "final_surrogate_loss",
                "test_surrogate_loss"):
      assert set(row[key]) == {"mean", "std"}
  with open(paths["table"], encoding="utf-8") as f:
    table = f.read()
  assert "sum-exponential" in table and "MAE" in table


def test_smoke_statistics_are_mean_and_std_over_seeds(smoke_run):
  config, _, results, _ = smoke_run
  assert len(results["members"]) == 3 * config.num_seeds
  n_test = results["dataset"]["num_test"]
  for row in results["per_tau"]:
    finals = [m["final"] for m in results["members"]
              if m["tau"] == row["tau"]]
    accs = np.array([f["test_accuracy"] for f in finals])
    # accuracies are exact counts over the clean test set
    np.testing.assert_allclose(accs * n_test, np.round(accs * n_test),
                               atol=1e-9)
    assert row["test_accuracy"]["mean"] == pytest.approx(accs.mean())
    assert row["test_accuracy"]["std"] == pytest.approx(accs.std(ddof=1))
    losses = np.array([f["train_loss"] for f in finals])
    assert row["final_surrogate_loss"]["mean"] == pytest.approx(losses.mean())
  epochs = results["members"][0]["history"]["epoch"]
  assert epochs == list(range(1, config.num_epochs + 1))


@pytest.mark.slow
def test_smoke_accuracy_matches_direct_model_apply(smoke_run):
  config, workdir, results, _ = smoke_run
  sweep = lib.build_sweep(config)
  gdir = lib.group_dir(workdir, sweep.members, stacked=True)
  store = training.CheckpointStore(os.path.join(gdir, "checkpoints"))
  template = common.init_states(sweep.model, sweep.optimizer, sweep.members,
                                sweep.dataset.input_shape, stacked=True)
  state, _ = store.restore(template)
  store.close()
  images = sweep.dataset.test.images
  labels = sweep.dataset.test.labels
  for k, member in enumerate(results["members"]):
    params = jax.tree.map(lambda x, k=k: x[k], state.params)
    logits = np.asarray(sweep.model.apply({"params": params}, images))
    accuracy = np.mean(np.argmax(logits, -1) == labels)
    assert member["final"]["test_accuracy"] == pytest.approx(accuracy)


# ---------------------------------------------------- synthetic bound check


@pytest.mark.slow
def test_synthetic_bound_holds_at_every_checkpoint(tmp_path):
  config = presets.get_config("synthetic_smoke")
  results, paths = lib.run(config, str(tmp_path), log=lambda s: None)
  check = results["bound_check"]
  num_evals = config.num_epochs // config.eval_every_epochs
  assert check["applicable"] is True
  assert check["num_checks"] == len(results["members"]) * num_evals
  assert check["num_violations"] == 0 and check["holds"] is True
  assert check["min_slack"] >= 0
  for member in results["members"]:
    hist = member["history"]
    for z, s, b in zip(hist["zero_one_excess"], hist["surrogate_excess"],
                       hist["bound"], strict=True):
      assert 0 <= z <= b + 1e-12
      assert s >= 0
      # Γ_τ recomputed independently (SciPy) from the recorded E[ΔC_τ]
      assert b == pytest.approx(np_gamma(s, member["tau"], 4), rel=1e-7,
                                abs=1e-12)
  assert os.path.getsize(paths["bound_plot"]) > 0


@pytest.mark.slow
def test_auto_mode_falls_back_to_sequential_on_out_of_memory(tmp_path,
                                                             monkeypatch):
  original = lib.train_group
  calls = []

  def fake_oom_when_stacked(sweep, group, workdir, *, stacked, **kwargs):
    calls.append((len(group), stacked))
    if stacked:
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1 TB")
    return original(sweep, group, workdir, stacked=stacked, **kwargs)

  monkeypatch.setattr(lib, "train_group", fake_oom_when_stacked)
  config = _tiny_config((0.0, 2.0), "auto")
  config.num_epochs = 1
  config.eval_every_epochs = 1
  results, _ = lib.run(config, str(tmp_path), log=lambda s: None)
  assert calls == [(2, True), (1, False), (1, False)]
  assert results["sweep"]["mode"] == "sequential"
  assert [m["tau"] for m in results["members"]] == [0.0, 2.0]

  # Any other error propagates, and 'vmap' never falls back.
  config.sweep_mode = "vmap"
  with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
    lib.run(config, str(tmp_path / "vmap"), log=lambda s: None)
  # A full disk reported as RESOURCE_EXHAUSTED is not out of memory.
  calls.clear()

  def fake_full_disk(sweep, group, workdir, *, stacked, **kwargs):
    del kwargs
    calls.append((len(group), stacked))
    raise OSError(28, "RESOURCE_EXHAUSTED: No space left on device")

  monkeypatch.setattr(lib, "train_group", fake_full_disk)
  config.sweep_mode = "auto"
  with pytest.raises(OSError, match="No space"):
    lib.run(config, str(tmp_path / "disk"), log=lambda s: None)
  assert calls == [(2, True)]


@pytest.mark.slow
def test_resume_ignores_bookkeeping_fields_but_not_the_experiment(smoke_run,
                                                                  tmp_path):
  config, original, first, _ = smoke_run
  workdir = str(tmp_path / "copy")
  shutil.copytree(original, workdir)  # leave the shared fixture untouched
  config = config.copy_and_resolve_references()
  config.log_every_steps = 3  # bookkeeping only: resumes, nothing to train
  config.progress = True
  again, _ = lib.run(config, workdir, log=lambda s: None)
  assert again["per_tau"] == first["per_tau"]
  assert again["members"] == first["members"]
  config.optimizer.learning_rate = 0.5  # a different experiment
  with pytest.raises(ValueError, match="different config"):
    lib.run(config, workdir, log=lambda s: None)


# ------------------------------------------------------ paper-scale presets


def test_paper_scale_preset_fails_fast_without_prepared_data(tmp_path):
  config = presets.get_config("cifar10")
  config.data_dir = str(tmp_path / "empty")
  start = time.monotonic()
  with pytest.raises(FileNotFoundError, match="prepare"):
    lib.run(config, str(tmp_path / "run"), log=lambda s: None)
  assert time.monotonic() - start < 60  # no download/GCS retry loop
  assert not (tmp_path / "run").exists()  # a failed start leaves no dir


@pytest.mark.slow
def test_cifar10_preset_runs_on_mock_tfds_data(tmp_path):
  """The tfds path, augmentation and sequential mode, on tfds mock records."""
  tfds = pytest.importorskip("tensorflow_datasets")
  name = "cifar10"
  version = str(tfds.builder_cls(name).VERSION)
  prepared = tmp_path / "tfds" / name / version
  prepared.mkdir(parents=True)
  (prepared / "dataset_info.json").write_text(json.dumps(
      {"name": name, "version": version, "fileFormat": "array_record"}))
  config = presets.get_config("cifar10")
  assert config.sweep_mode == "sequential" and config.augment is None
  config.data_dir = str(tmp_path / "tfds")
  config.model.name = "cnn"
  config.model.kwargs = {"features": (4,), "strides": (4,),
                         "hidden_size": 0}
  config.taus = (0.0, 1.0)
  config.num_seeds = 1
  config.batch_size = 16
  config.eval_batch_size = 32
  config.num_epochs = 1
  config.eval_every_epochs = 1
  config.optimizer.warmup_epochs = 0
  config.optimizer.learning_rate = 0.05  # random mock labels, 3 steps
  config.progress = False
  config.tensorboard = False
  with tfds.testing.mock_data(num_examples=48):
    results, _ = lib.run(config, str(tmp_path / "run"), log=lambda s: None)
  assert results["sweep"]["mode"] == "sequential"
  assert results["dataset"]["num_classes"] == 10
  assert results["dataset"]["input_shape"] == [32, 32, 3]
  assert [m["tau"] for m in results["members"]] == [0.0, 1.0]
  for m in results["members"]:
    assert 0.0 <= m["final"]["test_accuracy"] <= 1.0
    assert math.isfinite(m["final"]["train_loss"])


# ------------------------------------------------- shared experiment pieces

# Training-split sizes of the public datasets (before any validation
# hold-out), and the warm-up steps the presets hard-coded before they were
# derived from warmup_epochs: 5·⌊N/1024⌋ (loss comparison) and 10·⌊(N −
# 1024)/1024⌋ (adversarial, 1024 held out).
_TRAIN_SIZES = {"mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
                "svhn_cropped": 73_257, "svhn": 73_257}
_OLD_WARMUP = {
    "loss_comparison": {"mnist": 5 * 58, "cifar10": 5 * 48,
                        "cifar100": 5 * 48, "svhn": 5 * 71},
    "adversarial_training": {"cifar10": 10 * (48_976 // 1024),
                             "cifar100": 10 * (48_976 // 1024),
                             "svhn": 10 * (72_233 // 1024)},
}


@pytest.mark.parametrize("experiment", sorted(_OLD_WARMUP))
def test_resolved_warmup_steps_equal_the_former_hard_coded_values(experiment):
  import importlib  # pylint: disable=g-import-not-at-top

  module = importlib.import_module(f"configs.{experiment}")
  for name in module.PRESETS:
    config = module.get_config(name)
    num_train = _TRAIN_SIZES.get(config.dataset, 1000)
    num_train -= config.validation_size
    spe = common.steps_per_epoch(config, num_train)
    settings = common.optimizer_settings(config, spe)
    assert settings["warmup_steps"] == _OLD_WARMUP[experiment].get(name, 0), (
        experiment, name)
    assert "warmup_epochs" not in settings
    training.make_optimizer(settings, config.num_epochs * spe)  # known fields


def test_warmup_follows_the_batch_size():
  config = presets.get_config("cifar10")
  config.batch_size = 512
  settings = common.optimizer_settings(
      config, common.steps_per_epoch(config, 50_000))
  assert settings["warmup_steps"] == 5 * (50_000 // 512)


def test_optimizer_settings_reject_warmup_steps_and_bad_epochs():
  config = presets.get_config("smoke")
  config.optimizer.warmup_epochs = -1
  with pytest.raises(ValueError, match=r"config\.optimizer\.warmup_epochs"):
    lib.validate_config(config)
  config = presets.get_config("smoke")
  with config.optimizer.ignore_type():
    config.optimizer.warmup_steps = 10
  with pytest.raises(ValueError, match=r"warmup_steps"):
    common.optimizer_settings(config, 5)


def test_build_optimizer_step_counts():
  config = presets.get_config("smoke")
  config.optimizer.warmup_epochs = 1
  plan = common.build_optimizer(config, 1000)
  assert plan.steps_per_epoch == 1000 // config.batch_size
  assert plan.total_steps == plan.steps_per_epoch * config.num_epochs
  assert plan.warmup_steps == plan.steps_per_epoch
  assert float(plan.schedule(0)) == 0.0  # the warm-up starts at 0
  with pytest.raises(ValueError, match=r"config\.batch_size"):
    common.build_optimizer(config, config.batch_size - 1)


def test_step_cache_builds_once_per_key():
  cache = common.StepCache()
  built = []
  assert cache.get("a", lambda: built.append("a") or 1) == 1
  assert cache.get("a", lambda: built.append("again") or 2) == 1
  assert cache.get(("b", 3), lambda: built.append("b") or 3) == 3
  assert built == ["a", "b"] and len(cache) == 2
  assert len(common.StepCache()) == 0  # no state shared between caches


def test_config_checks_name_the_field():
  config = {"n": 3, "m": None, "x": 2.5, "taus": [0, 1.5], "bad": [1, True]}
  assert common.check_int(config, "n", low=1) == 3
  assert common.check_int(config, "m", optional=True) is None
  with pytest.raises(ValueError, match=r"config\.m must be an integer"):
    common.check_int(config, "m")
  with pytest.raises(ValueError, match=r"config\.n .*<= 2"):
    common.check_int(config, "n", high=2)
  assert common.check_float(config, "x", low=0.0) == 2.5
  assert common.check_float_sequence(config, "taus", low=0.0) == (0.0, 1.5)
  assert common.check_float_sequence(config, "x") == (2.5,)
  with pytest.raises(ValueError, match=r"config\.bad.*bad value True"):
    common.check_float_sequence(config, "bad")
  with pytest.raises(ValueError, match=r"config\.missing is missing"):
    common.check_int(config, "missing")


def test_mean_and_std_is_the_sample_std():
  values = [0.9, 0.95, 0.97]
  mean, std = common.mean_and_std(values)
  assert mean == pytest.approx(sum(values) / 3)
  assert std == pytest.approx(math.sqrt(
      sum((v - mean) ** 2 for v in values) / 2))
  assert common.mean_and_std([0.5]) == (0.5, 0.0)


@pytest.mark.slow
def test_report_rerenders_a_finished_workdir(smoke_run, tmp_path):
  _, original, results, _ = smoke_run
  workdir = tmp_path / "copy"
  shutil.copytree(original, workdir)
  for name in ("results.md", "accuracy_vs_tau.png", "training_curves.png"):
    (workdir / name).unlink()
  from experiments import loss_comparison_report as report  # pylint: disable=g-import-not-at-top

  (paths,) = report.rerender(str(workdir))
  table = (workdir / "results.md").read_text(encoding="utf-8")
  assert table == (pathlib.Path(original) / "results.md").read_text(
      encoding="utf-8")
  assert f"mean ± sample std over n = {results['sweep']['num_seeds']} " \
         "seeds" in table
  for name in ("accuracy_plot", "curves_plot"):
    assert os.path.getsize(paths[name]) > 0
  with pytest.raises(FileNotFoundError, match="results.json"):
    report.rerender(str(tmp_path / "nothing"))
