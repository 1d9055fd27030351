"""On digits, adversarial training is measurably more robust than plain CE.

Every method trains with the same budget (model, initialisations, optimizer,
epochs, batches); the seeds run as vmapped members of the one train step. The
robust accuracy is measured on the held-out test split under PGD, an attack
that the training never saw with these settings (more steps, other step size,
other random start), by an evaluation independent of the training objective.
"""

import jax
import numpy as np
import pytest

from compsum_jax import attacks, data, models, training
from compsum_jax.training import adversarial

EPS = 0.1


def _train_and_attack(method, hparams, *, model, seeds, epochs, train_steps,
                      eval_attacks):
  ds = data.load_dataset("digits", seed=0)
  k = len(seeds)
  batch_size = 64
  total = data.num_train_batches(ds.train, batch_size) * epochs
  opt = training.make_optimizer(
      {"name": "sgd", "learning_rate": 0.05, "weight_decay": 5e-4,
       "weight_decay_mask": "kernels"}, total)
  state = training.init_member_states(
      model, opt, rngs=list(seeds), input_shape=ds.input_shape,
      hparams={name: [v] * k for name, v in hparams.items()})
  objective = adversarial.make_objective(
      model, method, {"eps": EPS, "step_size": EPS / 2,
                      "num_steps": train_steps})
  step = training.make_train_step(objective, opt, num_members=k)
  for epoch in range(epochs):
    for batch in data.train_batches(ds.train, batch_size, seed=0,
                                    epoch=epoch):
      state, metrics = step(state, batch)
  assert np.all(np.asarray(metrics["finite"]) == 1.0)
  eval_step = training.make_eval_step(
      adversarial.make_robust_eval_fn(model, eval_attacks), num_members=k)
  out = training.evaluate(eval_step, state,
                          data.eval_batches(ds.test, ds.test.num_examples),
                          rng=123)
  return out


def _check_more_robust(model, seeds, epochs, train_steps, eval_attacks,
                       min_gap):
  kw = dict(model=model, seeds=seeds, epochs=epochs, train_steps=train_steps,
            eval_attacks=eval_attacks)
  plain = _train_and_attack("standard", {"tau": 1.0}, **kw)
  for method, hp in (("adv_comp_sum", {"tau": 1.0, "nu": 0.1, "rho": 1.0}),
                     ("trades", {"beta": 6.0})):
    robust = _train_and_attack(method, hp, **kw)
    for name in eval_attacks:
      gap = robust[f"robust_{name}"] - plain[f"robust_{name}"]
      # More robust for every seed, and by a clear margin on average.
      assert np.all(gap > 0.02), (method, name, gap)
      assert np.mean(gap) > min_gap, (method, name, gap)
      # Robust accuracy never exceeds clean accuracy.
      assert np.all(robust[f"robust_{name}"] <= robust["correct"])


@pytest.mark.slow
def test_adversarial_training_is_more_robust_than_cross_entropy_fast():
  """3 seeds, MLP, 10 epochs, 3-step training attack; PGD-20 at test."""
  pgd20 = attacks.build_attack("trades_eval", eps=EPS, step_size=EPS / 4,
                               num_steps=20)
  _check_more_robust(models.get_model("mlp", 10, hidden_sizes=(64,)),
                     seeds=(0, 1, 2), epochs=10, train_steps=3,
                     eval_attacks={"pgd20": pgd20}, min_gap=0.08)


@pytest.mark.slow
def test_adversarial_training_is_more_robust_than_cross_entropy_cnn():
  """5 seeds, strided CNN with batch norm, 15 epochs, 10-step attack;
  PGD-20 (CE) and PGD-40 on the margin with Adam at test."""
  pgd20 = attacks.build_attack("trades_eval", eps=EPS, step_size=EPS / 4,
                               num_steps=20)
  pgd40 = attacks.build_attack("pgd40_margin", eps=EPS)
  model = models.get_model("cnn", 10, features=(16, 32), strides=(1, 2),
                           hidden_size=32, use_batch_norm=True)
  with jax.default_matmul_precision("float32"):
    _check_more_robust(model, seeds=(0, 1, 2, 3, 4), epochs=15,
                       train_steps=10,
                       eval_attacks={"pgd20": pgd20, "pgd40_margin": pgd40},
                       min_gap=0.15)
