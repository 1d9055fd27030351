"""Subprocess helper for the SIGKILL resume tests (tests/test_training_loop.py,
tests/test_checkpoint_damage.py).

Trains a small MLP on digits with :func:`compsum_jax.training.fit`
into ``--workdir`` (resuming from it if it holds checkpoints) and writes the
final TrainState's leaves to ``<workdir>/final_state.npz`` (plain arrays).
``--sleep`` slows each host batch down so the test can kill the process
mid-training. ``--hang_in_deletion=FILE`` makes orbax's first deletion of an
old checkpoint stop halfway and hang (this process only; the library is not
changed), so the test can SIGKILL it at exactly that moment.
"""

import argparse
import os
import time

import jax
import numpy as np

from compsum_jax import data, models, training

BATCH_SIZE = 64


def hang_in_first_deletion(ready_file: str) -> None:
  """Patches orbax's deleter so that its first deletion stops halfway.

  The patched ``PathDeleter.delete`` unlinks the files of the step directory
  in the order of orbax's own deleter (the directory's files, then each
  subdirectory's, depth first; directories are removed only at the end),
  stops after half of them, writes the step directory's path to
  ``ready_file`` (atomically) and sleeps until the process is killed.
  """
  from orbax.checkpoint._src.path import deleter  # pylint: disable=g-import-not-at-top

  def delete(self, path, *, destination=None, overwrite=False):
    del self, destination, overwrite
    files = []
    for root, dirs, names in os.walk(str(path)):
      dirs.sort()
      files += [os.path.join(root, name) for name in sorted(names)]
    for name in files[:(len(files) + 1) // 2]:
      os.unlink(name)
    with open(ready_file + ".tmp", "w", encoding="utf-8") as f:
      f.write(str(path))
    os.replace(ready_file + ".tmp", ready_file)
    while True:  # until SIGKILL
      time.sleep(60)

  deleter.PathDeleter.delete = delete


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--sleep", type=float, default=0.0)
  parser.add_argument("--hang_in_deletion", default=None)
  args = parser.parse_args()
  if args.hang_in_deletion:
    hang_in_first_deletion(args.hang_in_deletion)

  dataset = data.load_dataset("digits", seed=0)
  # An MLP compiles in a fraction of a CNN's time on XLA:CPU; the loop logic
  # under test does not depend on the architecture.
  model = models.get_model("mlp", dataset.num_classes, hidden_sizes=(64,))
  steps_per_epoch = data.num_train_batches(dataset.train, BATCH_SIZE)
  total_steps = steps_per_epoch * args.epochs
  config = {"optimizer": {"name": "sgd", "learning_rate": 0.05,
                          "momentum": 0.9, "weight_decay": 5e-4,
                          "schedule": "cosine", "warmup_steps": 5},
            "batch_size": BATCH_SIZE, "epochs": args.epochs, "seed": 0}
  optimizer = training.make_optimizer(config["optimizer"], total_steps)
  state = training.init_train_state(model, optimizer, rng=0,
                                    input_shape=dataset.input_shape,
                                    hparams={"tau": 0.7}, ema=True)
  train_step = training.make_train_step(
      training.classification_objective(model), optimizer, ema_decay=0.9,
      augment_fn=lambda key, batch: dict(
          batch, image=data.augment_images(key, batch["image"],
                                           crop_padding=1, flip=False)))
  eval_step = training.make_eval_step(training.classification_eval_fn(model))

  def train_batches(epoch):
    for batch in data.train_batches(dataset.train, BATCH_SIZE, seed=0,
                                    epoch=epoch):
      time.sleep(args.sleep)
      yield batch

  def evaluate_fn(state, epoch):
    del epoch
    result = training.evaluate(eval_step, state,
                               data.eval_batches(dataset.test, 128))
    return {"test_accuracy": result["accuracy"]}

  result = training.fit(
      workdir=args.workdir, config=config, state=state, train_step=train_step,
      train_batches=train_batches, steps_per_epoch=steps_per_epoch,
      num_epochs=args.epochs, evaluate_fn=evaluate_fn,
      checkpoint_every_steps=5, keep_checkpoints=2,
      best_metric="test_accuracy", log_every_steps=5, progress=False)
  leaves = jax.tree.leaves(jax.device_get(result.state))
  np.savez(os.path.join(args.workdir, "final_state.npz"),
           *[np.asarray(x) for x in leaves])


if __name__ == "__main__":
  main()
