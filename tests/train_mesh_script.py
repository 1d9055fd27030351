"""Subprocess helper for test_training_step: 4 fake CPU devices vs 1 device.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=4 set before jax is
imported. Trains the same batch-norm model on the same global batches with a
('data',) mesh over 4 devices and with no mesh (1 device), single-member and
K=3 vmapped, and prints one JSON line with the largest parameter differences
and the eval sums of both runs.
"""

import json
import os
import sys
import tempfile

import flax.linen as nn
import jax
import numpy as np

from compsum_jax import training


class TinyBatchNormNet(nn.Module):
  """Dense -> BatchNorm -> relu -> Dense, enough to exercise global BN."""

  @nn.compact
  def __call__(self, x, train=False):
    x = x.reshape(x.shape[0], -1)
    # No bias before batch norm: its gradient is 0 up to rounding, which Adam
    # would amplify to ±η and make runs incomparable.
    x = nn.Dense(32, use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(5)(nn.relu(x))


def noise_augment(key, batch):
  # x ← x + 0.1·N(0, 1): random numbers over the global batch shape.
  image = batch["image"]
  return dict(batch, image=image + 0.1 * jax.random.normal(key, image.shape))


def run(mesh, num_members, steps, batches, eval_batch):
  model = TinyBatchNormNet()
  optimizer = training.make_optimizer(
      {"name": "sgd", "learning_rate": 0.2, "momentum": 0.9,
       "weight_decay": 1e-3, "warmup_steps": 2}, steps)
  if num_members is None:
    state = training.init_train_state(model, optimizer, rng=3,
                                      input_shape=(12,),
                                      hparams={"tau": 0.5}, ema=True)
  else:
    taus = [0.5, 1.0, 1.7, 1.3][:num_members]
    state = training.init_member_states(
        model, optimizer, rngs=[3 + k for k in range(num_members)],
        input_shape=(12,), hparams={"tau": taus}, ema=True)
  state = training.place_state(state, mesh)
  step = training.make_train_step(
      training.classification_objective(model), optimizer, ema_decay=0.8,
      mesh=mesh, num_members=num_members, augment_fn=noise_augment)
  devices_used = set()
  for batch in batches:
    device_batch = training.shard_batch(batch, mesh)
    devices_used |= {len(device_batch["image"].sharding.device_set)}
    state, metrics = step(state, device_batch)
  kernel = state.params["Dense_0"]["kernel"]
  devices_used |= {len(kernel.sharding.device_set)}
  local_members = sorted({int(shard.data.shape[0])
                          for shard in kernel.addressable_shards})
  eval_step = training.make_eval_step(
      training.classification_eval_fn(model), mesh=mesh,
      num_members=num_members)
  sums = eval_step(state, training.shard_batch(eval_batch, mesh),
                   jax.random.key_data(jax.random.key(0)))
  # The partitioned program (collectives are inserted when compiling).
  hlo = (step.lower(state, training.shard_batch(batches[0], mesh)).compile()
         .as_text() if mesh is not None else "")
  collectives = sum(hlo.count(op) for op in ("all-reduce(", "all-gather(",
                                               "collective-permute(",
                                               "all-to-all(",
                                               "reduce-scatter("))
  return (jax.device_get(state), jax.device_get(metrics),
          jax.device_get(sums), sorted(devices_used), local_members,
          collectives)


def max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) -
                                 np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def fit_with_and_without_mesh(mesh, num_members=None):
  """fit() on 4 devices vs 1, then a resume on 4 devices from the workdir."""
  rs = np.random.RandomState(1)
  images = rs.randn(64, 12).astype(np.float32)
  labels = rs.randint(0, 5, 64).astype(np.int32)
  model = TinyBatchNormNet()
  steps_per_epoch, epochs = 4, 2
  optimizer = training.make_optimizer(
      {"name": "adamw", "learning_rate": 0.01}, steps_per_epoch * epochs)

  def train_batches(epoch):
    order = np.random.RandomState(epoch).permutation(64)
    for b in range(steps_per_epoch):
      idx = order[b * 16:(b + 1) * 16]
      yield {"image": images[idx], "label": labels[idx]}

  def run_fit(workdir, fit_mesh):
    if num_members is None:
      state = training.init_train_state(model, optimizer, rng=0,
                                        input_shape=(12,),
                                        hparams={"tau": 1.0})
    else:
      state = training.init_member_states(
          model, optimizer, rngs=list(range(num_members)), input_shape=(12,),
          hparams={"tau": [1.0 + 0.1 * k for k in range(num_members)]})
    step = training.make_train_step(training.classification_objective(model),
                                    optimizer, mesh=fit_mesh,
                                    num_members=num_members)
    return training.fit(workdir=workdir, config={"run": "mesh"}, state=state,
                        train_step=step, train_batches=train_batches,
                        steps_per_epoch=steps_per_epoch, num_epochs=epochs,
                        mesh=fit_mesh, progress=False, tensorboard=False)

  with tempfile.TemporaryDirectory() as tmp:
    one = run_fit(os.path.join(tmp, "one"), None)
    four = run_fit(os.path.join(tmp, "four"), mesh)
    resumed = run_fit(os.path.join(tmp, "four"), mesh)
    restored = jax.tree.leaves(resumed.state.params)[0]
    restored_devices = len(restored.sharding.device_set)
    # The same finished workdir reopened without a mesh (another device
    # layout, e.g. a restart on a smaller machine): restores onto 1 device.
    on_one = run_fit(os.path.join(tmp, "four"), None)
    return {
        "resumed_on_one_device_equal": max_diff(
            jax.device_get(four.state), jax.device_get(on_one.state)),
        "resumed_on_one_device_devices": len(
            jax.tree.leaves(on_one.state.params)[0].sharding.device_set),
        "params": max_diff(jax.device_get(one.state.params),
                           jax.device_get(four.state.params)),
        "resumed_from_step": resumed.resumed_from_step,
        "resumed_equal": max_diff(jax.device_get(four.state),
                                  jax.device_get(resumed.state)),
        "restored_devices": restored_devices,
        "restored_local_members": sorted({
            int(shard.data.shape[0]) for shard in restored.addressable_shards}
            ) if num_members else None,
        "steps": four.step,
    }


def member_mesh_errors():
  """Messages of the member-count checks on a 2-shard 'members' axis."""
  model = TinyBatchNormNet()
  optimizer = training.make_optimizer({"name": "sgd", "learning_rate": 0.1},
                                      10)
  mesh = training.make_member_mesh(2)
  messages = {}
  try:
    training.make_train_step(training.classification_objective(model),
                             optimizer, mesh=mesh, num_members=3)
  except ValueError as e:
    messages["step"] = str(e)
  state = training.init_member_states(model, optimizer, rngs=[0, 1, 2],
                                      input_shape=(12,),
                                      hparams={"tau": [1.0] * 3})
  try:
    training.place_state(state, mesh)
  except ValueError as e:
    messages["place"] = str(e)
  try:
    training.make_member_mesh(3, 2)
  except ValueError as e:
    messages["mesh"] = str(e)
  return messages


def main():
  rs = np.random.RandomState(0)
  steps = 6
  batches = [{"image": rs.randn(16, 12).astype(np.float32),
              "label": rs.randint(0, 5, 16).astype(np.int32)}
             for _ in range(steps)]
  mask = np.ones(16, np.float32)
  mask[-3:] = 0.0
  eval_batch = {"image": rs.randn(16, 12).astype(np.float32),
                "label": rs.randint(0, 5, 16).astype(np.int32), "mask": mask}
  mesh = training.make_data_mesh(4)
  out = {"num_devices": len(jax.devices()), "mesh_size": mesh.size}
  cases = (("single", None, mesh), ("members", 3, mesh),
           ("member_mesh_4x1", 4, training.make_member_mesh(4)),
           ("member_mesh_2x2", 4, training.make_member_mesh(2, 2)))
  for name, members, case_mesh in cases:
    s1, m1, e1, d1, _, _ = run(None, members, steps, batches, eval_batch)
    s4, m4, e4, d4, local, collectives = run(case_mesh, members, steps,
                                             batches, eval_batch)
    out[name] = {
        "devices_1": d1,
        "devices_4": d4,
        "local_members": local,
        "collectives": collectives,
        "params": max_diff(s1.params, s4.params),
        "batch_stats": max_diff(s1.batch_stats, s4.batch_stats),
        "ema_params": max_diff(s1.ema_params, s4.ema_params),
        "opt_state": max_diff(s1.opt_state, s4.opt_state),
        "loss": max_diff(m1["loss"], m4["loss"]),
        "eval_1": {k: np.asarray(v).tolist() for k, v in e1.items()},
        "eval_4": {k: np.asarray(v).tolist() for k, v in e4.items()},
        "param_scale": max(float(np.max(np.abs(x)))
                           for x in jax.tree.leaves(s1.params)),
    }
  out["fit"] = fit_with_and_without_mesh(mesh)
  out["fit_member_mesh"] = fit_with_and_without_mesh(
      training.make_member_mesh(2, 2), num_members=4)
  out["errors"] = member_mesh_errors()
  json.dump(out, sys.stdout)


if __name__ == "__main__":
  main()
