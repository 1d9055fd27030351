"""The registry of adversarial-training methods (training/adversarial.py):
objectives in the one train step, BN handling, ν = 0, a new entry."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compsum_jax import attacks, losses, models, training
from compsum_jax.losses import adversarial as adv_losses
from compsum_jax.training import adversarial

ATTACK = {"eps": 0.1, "step_size": 0.03, "num_steps": 3}


def _batch(seed=0, b=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(size=(b, 8, 8, 1)).astype(np.float32),
          "label": rng.integers(0, 10, size=b).astype(np.int32)}


def _bn_model():
  return models.get_model("cnn", 10, features=(8, 8), strides=(1, 2),
                          hidden_size=16, use_batch_norm=True)


def _init(model, seed=0):
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)),
                         train=False)
  stats = variables["batch_stats"]
  # Running statistics far from any batch's statistics, so evaluation mode
  # and training mode give clearly different functions.
  stats = jax.tree.map(lambda s: s + 0.7, stats)
  return variables["params"], stats


@pytest.mark.parametrize("method", [
    "adv_comp_sum",
    # trades shares adv_comp_sum's two-pass code path and pgd_at's single
    # pass is the plain one; both are kept out of the default run for time.
    pytest.param("trades", marks=pytest.mark.slow),
    pytest.param("pgd_at", marks=pytest.mark.slow)])
def test_objective_attacks_in_eval_mode_then_trains_clean_then_adversarial(
    method):
  """Spec of the BN choice written directly with flax and the attacks room.

  x' from the method's preset attack on model.apply(train=False) (running
  statistics); then a training-mode pass on x and one on x' (each with its
  own batch statistics), the running statistics updated in that order.
  """
  model = _bn_model()
  params, stats = _init(model)
  batch = _batch()
  x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  hp = {"tau": jnp.float32(1.0), "nu": jnp.float32(2.0),
        "rho": jnp.float32(1.0), "beta": jnp.float32(6.0)}
  rng = jax.random.key(3)
  objective = adversarial.make_objective(model, method, ATTACK)
  loss, aux = objective(params, stats, {**batch, "hparams": hp}, rng)

  def eval_logits(xx):
    return model.apply({"params": params, "batch_stats": stats}, xx,
                       train=False)

  attack = attacks.build_attack(adversarial.METHODS[method].train_attack,
                               **ATTACK)
  x_adv = attack(eval_logits, x, y, rng)

  def train_pass(s, xx):
    z, upd = model.apply({"params": params, "batch_stats": s}, xx,
                         train=True, mutable=["batch_stats"])
    return z, upd["batch_stats"]

  if method == "pgd_at":
    z_adv, want_stats = train_pass(stats, x_adv)
    want = jnp.mean(adv_losses.pgd_at_loss(z_adv, y))
  else:
    z, s1 = train_pass(stats, x)
    z_adv, want_stats = train_pass(s1, x_adv)
    want = jnp.mean(
        adv_losses.trades_loss(z, z_adv, y, 6.0) if method == "trades"
        else adv_losses.adv_comp_sum_loss(z, z_adv, y, 1.0, 2.0))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(aux["batch_stats"]),
                  jax.tree.leaves(want_stats), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The attack in TRAINING mode would give another x' (the choice matters).
  x_adv_train_mode = attack(lambda xx: train_pass(stats, xx)[0], x, y, rng)
  assert float(jnp.max(jnp.abs(x_adv_train_mode - x_adv))) > 1e-3


def test_inner_attack_of_one_example_ignores_the_rest_of_the_batch():
  """Evaluation-mode BN: example 0's x' does not depend on examples 1..B−1."""
  model = _bn_model()
  params, stats = _init(model)
  b1, b2 = _batch(0), _batch(1)
  b2["image"][0], b2["label"][0] = b1["image"][0], b1["label"][0]
  attack = adversarial.make_train_attack("adv_comp_sum", ATTACK)
  logits_fn = adversarial.inference_logits_fn(model, params, stats)
  keys = jax.random.split(jax.random.key(0), 16)  # same key for example 0
  x1 = attack(logits_fn, jnp.asarray(b1["image"]), jnp.asarray(b1["label"]),
              keys)
  x2 = attack(logits_fn, jnp.asarray(b2["image"]), jnp.asarray(b2["label"]),
              keys)
  np.testing.assert_array_equal(x1[0], x2[0])
  assert float(jnp.max(jnp.abs(x1[1:] - x2[1:]))) > 0


@pytest.mark.slow
def test_parameter_gradient_ignores_the_attack_path():
  """∇θ of the objective equals ∇θ of the outer loss at the (fixed) x'."""
  model = models.get_model("mlp", 10, hidden_sizes=(16,))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  batch = _batch()
  x, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
  hp = {"tau": jnp.float32(0.5), "nu": jnp.float32(1.5),
        "rho": jnp.float32(0.8)}
  rng = jax.random.key(5)
  objective = adversarial.make_objective(model, "adv_comp_sum", ATTACK)
  grad = jax.grad(lambda p: objective(p, {}, {**batch, "hparams": hp},
                                      rng)[0])(params)
  x_adv = adversarial.make_train_attack("adv_comp_sum", ATTACK)(
      lambda xx: model.apply({"params": params}, xx), x, y, rng)

  def outer(p):
    z = model.apply({"params": p}, x)
    z_adv = model.apply({"params": p}, x_adv)
    return jnp.mean(adv_losses.adv_comp_sum_loss(z, z_adv, y, 0.5, 1.5, 0.8))

  want = jax.grad(outer)(params)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_nu_zero_training_equals_comp_sum_training():
  """ADV-COMP-SUM with ν = 0 and ρ = 1 takes exactly the comp-sum steps."""
  model = models.get_model("mlp", 10, hidden_sizes=(16,))
  opt = training.make_optimizer({"name": "sgd", "learning_rate": 0.1}, 10)
  steps = [training.make_train_step(
      adversarial.make_objective(model, m, ATTACK), opt, donate=False)
      for m in ("standard", "adv_comp_sum")]
  for tau in (0.0, 1.0, 2.0):  # τ is a traced hparam: one compilation
    states = [training.init_train_state(model, opt, rng=0,
                                        input_shape=(8, 8, 1), hparams=hp)
              for hp in ({"tau": tau}, {"tau": tau, "nu": 0.0, "rho": 1.0})]
    for i in range(2):
      batch = _batch(i)
      (states[0], m0), (states[1], m1) = (
          steps[k](states[k], batch) for k in range(2))
      np.testing.assert_allclose(m0["loss"], m1["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(states[0].params),
                    jax.tree.leaves(states[1].params), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # That loss is the batch-mean ℓ_τ of the model's logits (independent).
    batch = _batch(9)
    z = model.apply({"params": states[1].params}, batch["image"])
    _, m = steps[1](states[1], batch)
    np.testing.assert_allclose(
        m["loss"], jnp.mean(losses.comp_sum_loss(z, batch["label"], tau)),
        rtol=1e-5)


def test_make_objective_rejects_unknown_method():
  with pytest.raises(ValueError, match="method must be one of"):
    adversarial.make_objective(_bn_model(), "madry", ATTACK)


def test_a_new_method_is_one_registry_entry():
  """A Method built from parts trains through make_objective unchanged:
  ℓ_τ at x' with τ = 1 is CE at x' (ℓ_1 = CE), i.e. PGD-AT's objective."""
  pgd_comp_sum = adversarial.Method(
      "pgd_comp_sum", train_attack="eps8_255",
      passes=(adversarial.ADVERSARIAL,),
      outer_loss=lambda z, z_adv, y, hp: adversarial.OuterTerms(
          losses.comp_sum_loss(z_adv, y, hp["tau"]), z_adv[:, 0],
          z_adv[:, 1]),
      hparams=(adversarial.HParam("tau"),))
  model = models.get_model("mlp", 10, hidden_sizes=(16,))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  batch, rng = _batch(), jax.random.key(4)
  new_loss, new_aux = adversarial.make_objective(model, pgd_comp_sum, ATTACK)(
      params, {}, {**batch, "hparams": {"tau": jnp.float32(1.0)}}, rng)
  x_adv = attacks.build_attack("eps8_255", **ATTACK)(
      lambda xx: model.apply({"params": params}, xx),
      jnp.asarray(batch["image"]), jnp.asarray(batch["label"]), rng)
  z_adv = np.asarray(model.apply({"params": params}, x_adv), np.float64)
  # CE(z', y) = logsumexp(z') − z'_y, in float64 NumPy.
  top = z_adv.max(-1)
  ce = (top + np.log(np.exp(z_adv - top[:, None]).sum(-1))
        - z_adv[np.arange(len(z_adv)), batch["label"]])
  np.testing.assert_allclose(new_loss, ce.mean(), rtol=1e-5)
  np.testing.assert_allclose(new_aux["metrics"]["adv_accuracy"],
                             np.mean(z_adv.argmax(-1) == batch["label"]))


def test_registry_checks_hyperparameters_and_attack_recipes():
  adv_comp_sum = adversarial.METHODS["adv_comp_sum"]
  assert adv_comp_sum.check_hparams({"tau": 1, "nu": 0.1, "rho": 2.0}) == {
      "tau": 1.0, "nu": 0.1, "rho": 2.0}
  with pytest.raises(ValueError, match=r"adv_comp_sum rho must be a finite "
                     r"number > 0, got adv_comp_sum rho=0.0"):
    adv_comp_sum.check_hparams({"tau": 1.0, "nu": 0.1, "rho": 0.0})
  with pytest.raises(ValueError, match="nu=nan"):
    adv_comp_sum.check_hparams({"tau": 1.0, "nu": float("nan"), "rho": 1.0})
  with pytest.raises(ValueError, match=r"takes hyperparameters \['beta'\]"):
    adversarial.METHODS["trades"].check_hparams({"tau": 1.0})
  threat = {"eps": 0.1, "step_size": 0.04, "num_steps": 5, "norm": "linf",
            "optimizer": None}
  trades = adversarial.METHODS["trades"]
  # 'original' keeps TRADES' own ε and step; the default takes the run's.
  assert trades.train_attack_overrides(threat, "original") == {
      "num_steps": 5, "norm": "linf"}
  assert trades.train_attack_overrides(threat) == {
      "eps": 0.1, "step_size": 0.04, "num_steps": 5, "norm": "linf"}
  with pytest.raises(ValueError, match="recipe='madry'"):
    trades.train_attack_overrides(threat, "madry")
  with pytest.raises(ValueError, match="no inner maximisation"):
    adversarial.make_train_attack("standard", threat)


@pytest.mark.slow
def test_vmapped_members_train_like_single_runs():
  """A τ grid as vmapped members equals separate single-member runs."""
  model = models.get_model("mlp", 10, hidden_sizes=(16,))
  opt = training.make_optimizer({"name": "sgd", "learning_rate": 0.1}, 10)
  taus = [0.5, 1.5]
  objective = adversarial.make_objective(model, "adv_comp_sum", ATTACK)
  hp = {"tau": taus, "nu": [1.0, 1.0], "rho": [1.0, 1.0]}
  stacked = training.init_member_states(model, opt, rngs=[0, 1],
                                        input_shape=(8, 8, 1), hparams=hp)
  step_k = training.make_train_step(objective, opt, num_members=2,
                                    donate=False)
  step_1 = training.make_train_step(objective, opt, donate=False)
  singles = training.unstack_states(stacked)
  batch = _batch()
  stacked, _ = step_k(stacked, batch)
  for k in range(2):
    single, _ = step_1(singles[k], batch)
    for a, b in zip(jax.tree.leaves(flax.serialization.to_state_dict(
        training.unstack_states(stacked)[k].params)),
                    jax.tree.leaves(single.params), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
