"""Subprocess helper for tests/test_training_distributed.py.

One process of a (possibly) multi-process run: joins the run with
``compsum_jax.training.distributed.initialize`` when ``--num_processes`` is
given, then trains a small MLP on digits with :func:`training.fit`, each
process materialising only its rows of every global batch
(``training.process_batch_rows``), evaluates on the test split the same way,
and writes (process 0 only) ``<workdir>/final.npz`` (the final state's leaves)
and ``<workdir>/final.json`` (eval metrics, counts, process count).

Modes: ``--members=K --member_shards=S`` trains K vmapped members split over
a ('members', 'data') mesh of S groups; ``--sleep`` slows each host batch so a
test can kill a process mid-run; ``--mode=init_only`` only starts up.
"""

import argparse
import json
import os
import time

import jax

from compsum_jax.training import distributed


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir")
  parser.add_argument("--coordinator_address", default=None)
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--cpu_devices", type=int, default=1)
  parser.add_argument("--members", type=int, default=0)
  parser.add_argument("--member_shards", type=int, default=1)
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--sleep", type=float, default=0.0)
  parser.add_argument("--failure_timeout", type=float, default=30.0)
  parser.add_argument("--mode", default="fit", choices=["fit", "init_only"])
  args = parser.parse_args()

  jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  setup = distributed.initialize(
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes, process_id=args.process_id,
      failure_timeout_s=args.failure_timeout)
  if args.mode == "init_only":
    print(f"initialized {setup}", flush=True)
    return
  # Imported after start-up: nothing may touch JAX's backend before it.
  import numpy as np  # pylint: disable=g-import-not-at-top

  from compsum_jax import data, models, training  # pylint: disable=g-import-not-at-top

  batch_size, eval_batch_size = 64, 100
  dataset = data.load_dataset("digits", seed=0)
  model = models.get_model("mlp", dataset.num_classes, hidden_sizes=(32,))
  steps_per_epoch = data.num_train_batches(dataset.train, batch_size)
  total_steps = steps_per_epoch * args.epochs
  opt_cfg = {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9,
             "weight_decay": 5e-4, "schedule": "cosine", "warmup_steps": 3}
  optimizer = training.make_optimizer(opt_cfg, total_steps)
  members = args.members or None
  if members is None:
    mesh = training.make_data_mesh() if len(jax.devices()) > 1 else None
    state = training.init_train_state(model, optimizer, rng=0,
                                      input_shape=dataset.input_shape,
                                      hparams={"tau": 0.7}, ema=True)
  else:
    mesh = (training.make_member_mesh(args.member_shards)
            if args.member_shards > 1 or len(jax.devices()) > 1 else None)
    state = training.init_member_states(
        model, optimizer, rngs=list(range(members)),
        input_shape=dataset.input_shape,
        hparams={"tau": [0.5 + 0.25 * k for k in range(members)]}, ema=True)
  train_step = training.make_train_step(
      training.classification_objective(model), optimizer, ema_decay=0.9,
      mesh=mesh, num_members=members)
  eval_step = training.make_eval_step(training.classification_eval_fn(model),
                                      mesh=mesh, num_members=members)
  train_rows = training.process_batch_rows(mesh, batch_size)
  eval_rows = training.process_batch_rows(mesh, eval_batch_size)

  def train_batches(epoch):
    for batch in data.train_batches(dataset.train, batch_size, seed=0,
                                    epoch=epoch, rows=train_rows):
      time.sleep(args.sleep)
      yield batch

  def evaluate_fn(state, epoch):
    del epoch
    out = training.evaluate(
        eval_step, state, data.eval_batches(dataset.test, eval_batch_size,
                                            rows=eval_rows),
        mesh=mesh, global_batch_size=eval_batch_size)
    return {"test_accuracy": out["accuracy"], "test_loss": out["loss"],
            "test_count": out["count"], "test_correct": out["correct_sum"]}

  result = training.fit(
      workdir=args.workdir, config={"opt": opt_cfg, "members": args.members},
      state=state, train_step=train_step, train_batches=train_batches,
      steps_per_epoch=steps_per_epoch, num_epochs=args.epochs, mesh=mesh,
      evaluate_fn=evaluate_fn, checkpoint_every_steps=5, keep_checkpoints=2,
      best_metric="test_accuracy", log_every_steps=5, progress=True,
      tensorboard=False, global_batch_size=batch_size)
  final_state = training.fetch(result.state)
  final_eval = evaluate_fn(result.state, args.epochs)
  # Exact combination of per-process partial counts (robust-count helper):
  # each process counts the test labels of its own contiguous share.
  share = distributed.process_slice(dataset.test.num_examples)
  label_counts = training.sum_over_processes(
      {"n": share.stop - share.start,
       "ones": int(np.sum(dataset.test.labels[share] == 1))})
  if training.is_primary():
    np.savez(os.path.join(args.workdir, "final.npz"),
             *[np.asarray(x) for x in jax.tree.leaves(final_state)])
    with open(os.path.join(args.workdir, "final.json"), "w",
              encoding="utf-8") as f:
      json.dump({"eval": training.metrics.to_jsonable(final_eval),
                 "process_count": jax.process_count(),
                 "device_count": len(jax.devices()),
                 "resumed_from_step": result.resumed_from_step,
                 "step": result.step,
                 "label_counts": training.metrics.to_jsonable(label_counts),
                 "run": distributed.run_record(mesh),
                 "train_rows": len(train_rows),
                 "eval_rows": len(eval_rows)}, f)
  print(f"process {jax.process_index()} done at step {result.step}",
        flush=True)


if __name__ == "__main__":
  main()
