"""A tfds training split over cooperating processes: each reads only its rows.

On a locally prepared tfds dataset (mnist layout, array_record, written
without TensorFlow as in tests/test_data_tfds.py), an experiment's smoke
preset as 2 processes x 1 CPU device (tools/launch_local.py) gives the results
of 1 process x 2 CPU devices (which loads the whole split), and each process
decoded only the training records of its own rows: its share of the channel
statistics, its half of every training batch and its rows of every padded
evaluation batch of the training split, counted by the split's reader.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import distributed_tfds_script as script  # noqa: E402
import process_helpers  # noqa: E402
from test_data_tfds import _write_prepared_dataset  # noqa: E402

from compsum_jax.data import tfds_source  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "distributed_tfds_script.py")
RUN_TIMEOUT_S = 900  # generous: the test machines are shared
NUM_TRAIN_RECORDS, NUM_TEST_RECORDS = 352, 96


def _env() -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  return env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  root = tmp_path_factory.mktemp("tfds")
  spec = tfds_source.TFDS_SPECS["mnist"]
  rng = np.random.default_rng(0)
  n = NUM_TRAIN_RECORDS + NUM_TEST_RECORDS
  labels = rng.integers(0, spec.num_classes, n)
  # class-dependent brightness: something to learn
  images = np.clip(rng.normal(20.0 * labels[:, None, None, None], 40.0,
                              (n,) + spec.image_shape), 0, 255
                   ).astype(np.uint8)
  split = NUM_TRAIN_RECORDS
  _write_prepared_dataset(str(root), "mnist",
                          {"train": (images[:split], labels[:split]),
                           "test": (images[split:], labels[split:])})
  return str(root)


def _run(command: list[str], log: str) -> None:
  """Runs ``command`` to its end; fails the test with its log if non-zero."""
  process_helpers.run_logged(command, log, env=_env(), cwd=ROOT,
                             timeout=RUN_TIMEOUT_S)


def _report(text: str) -> dict:
  """The script's JSON line."""
  return json.loads([line for line in text.splitlines()
                     if line.startswith("{\"process\"")][-1])


def _two_ways(tmp_path, experiment: str, data_dir: str):
  """(results, report) of 1 process x 2 devices; (results, [reports]) of 2
  processes x 1 device."""
  base = [sys.executable, SCRIPT, f"--experiment={experiment}",
          f"--data_dir={data_dir}"]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  _run(base + [f"--workdir={one}", "--config.cpu_devices=2"],
       str(tmp_path / "one.log"))
  _run([sys.executable, os.path.join(ROOT, "tools", "launch_local.py"),
        "--num_processes=2", "--cpu_devices=1",
        f"--log_dir={tmp_path / 'two.d'}", "--", *base,
        f"--workdir={two}"], str(tmp_path / "two.log"))
  with open(tmp_path / "one.log", encoding="utf-8") as f:
    report_one = _report(f.read())
  reports = []
  for i in range(2):
    with open(tmp_path / "two.d" / f"process_{i}.log", encoding="utf-8") as f:
      reports.append(_report(f.read()))
  with open(os.path.join(one, "results.json"), encoding="utf-8") as f:
    results_one = json.load(f)
  with open(os.path.join(two, "results.json"), encoding="utf-8") as f:
    results_two = json.load(f)
  return results_one, report_one, results_two, reports


def _relative_difference(a: float, b: float) -> float:
  return abs(float(a) - float(b)) / max(abs(float(a)), abs(float(b)), 1e-6)


def _padded_rows_read(num_examples: int, batch_size: int, process: int,
                      num_processes: int) -> int:
  """Real (unpadded) examples among process p's rows of every padded batch:
  rows [p·B/P, (p+1)·B/P) of batches starting at 0, B, 2B, …"""
  per = batch_size // num_processes
  total = 0
  for start in range(0, num_examples, batch_size):
    first = start + process * per
    total += max(0, min(num_examples - first, per))
  return total


@pytest.mark.slow
def test_loss_comparison_two_processes_read_only_their_records(tmp_path,
                                                               data_dir):
  config = script.loss_comparison_config(data_dir)
  results_one, report_one, results_two, reports = _two_ways(
      tmp_path, "loss_comparison", data_dir)
  assert report_one["on_demand"] is False  # one process: the whole split
  assert [r["process"] for r in reports] == [0, 1]
  assert all(r["on_demand"] for r in reports)
  assert results_two["run"]["num_processes"] == 2
  assert results_one["sweep"]["mesh"] == results_two["sweep"]["mesh"] == {
      "members": 1, "data": 2}
  # the same numbers as the whole-split load in one process
  for m_one, m_two in zip(results_one["members"], results_two["members"],
                          strict=True):
    for field, value in m_one["final"].items():
      assert _relative_difference(value, m_two["final"][field]) <= 1e-5, (
          m_one["tau"], field)
  assert results_one["dataset"]["fraction_train_labels_flipped"] == (
      results_two["dataset"]["fraction_train_labels_flipped"]) > 0
  # what each process decoded: its share of the statistics pass, its half
  # of every training batch, its rows of every evaluation of the train split
  n = NUM_TRAIN_RECORDS - config.validation_size
  assert reports[0]["num_train"] == reports[1]["num_train"] == n
  b, e = config.batch_size, config.eval_batch_size
  steps = (n // b) * config.num_epochs
  train_evaluations = len(results_two["members"][0]["history"][
      "train_accuracy"])
  assert train_evaluations >= 1
  for p, report in enumerate(reports):
    share = (p + 1) * n // 2 - p * n // 2
    expected = (share + steps * (b // 2)
                + train_evaluations * _padded_rows_read(n, e, p, 2))
    assert report["records_read"] == expected, (p, report, expected)
  # together exactly one whole-split load's worth per pass, no record twice
  assert sum(r["records_read"] for r in reports) == (
      n + steps * b + train_evaluations * n)


@pytest.mark.slow  # adversarial training on 2 processes: minutes when loaded
def test_adversarial_two_processes_read_only_their_records(tmp_path,
                                                           data_dir):
  config = script.adversarial_config(data_dir)
  results_one, report_one, results_two, reports = _two_ways(
      tmp_path, "adversarial_training", data_dir)
  assert report_one["on_demand"] is False
  assert all(r["on_demand"] for r in reports)
  assert results_two["run"]["num_processes"] == 2
  for r_one, r_two in zip(results_one["runs"], results_two["runs"],
                          strict=True):
    assert r_one["status"] == r_two["status"] == "ok"
    for field in ["clean_accuracy"] + [k for k in r_one
                                       if k.startswith("robust_")]:
      assert _relative_difference(r_one[field], r_two[field]) <= 1e-5, field
    for name, value in r_one["val"].items():
      assert _relative_difference(value, r_two["val"][name]) <= 1e-5, name
  # the training split is read only by the training batches (validation and
  # test are read whole): its share of the statistics + half of each batch
  n = NUM_TRAIN_RECORDS - config.validation_size
  steps = (n // config.batch_size) * config.num_epochs
  for p, report in enumerate(reports):
    share = (p + 1) * n // 2 - p * n // 2
    assert report["records_read"] == share + steps * config.batch_size // 2
