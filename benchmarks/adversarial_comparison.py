r"""ADV-COMP-SUM against TRADES and PGD-AT on digits, with paired seeds and intervals.

Runs the adversarial-training experiment (``experiments.adversarial_training_lib.run``,
the ``digits`` preset) once per setting below, every setting with the same seeds
0..S-1 (paired: one shared data split, ``data_seed`` 0, and the same model
initialisation for seed index i in every setting), and evaluates every run on
the 360 test digits with the full AutoAttack 'standard' cascade (APGD-CE ->
APGD-T (9 targets) -> FAB-T (9 targets) -> Square (5000 queries), 100
iterations each, no rescaling: the attack preset 'aa_standard').

Settings:

* PGD-AT; TRADES with beta in {1, 6};
* ADV-COMP-SUM with tau in {0.5, 1} x one nu per tau below the constant-classifier
  threshold nu*(h) (docs/math.md (10.7)) x rho in {1, 4}. nu = nu*/8 with nu* the
  value measured on digits networks (2.4-2.6 at tau = 0.5, 0.75-0.81 at tau = 1,
  ``benchmarks/results/adversarial.md``): nu = 0.3 at tau = 0.5, 0.1 at tau = 1.
  rho = 4 asks for logit margins four times larger for the same loss (the loss
  is l_tau(z/rho) + (nu/rho)||v||, docs/math.md (10.4)); nu* does not depend on
  rho (both terms of the slope at s = 0 scale by 1/rho).

Two phases. Training: every setting and seed is trained and early-stopped as
the experiment does, and evaluated on test by PGD-20 and PGD-40-margin (the
experiment's cascade is switched off there: at about 100 s per run on 2 cores
it would dominate). Selection on validation, not test: the best ADV-COMP-SUM
setting and the best TRADES beta are the ones with the highest mean (over seeds)
validation robust accuracy of the early-stopping checkpoint (PGD-40 on the
margin, 256 held-out digits). Full cascade: the early-stopping checkpoint of every
seed of the selected ADV-COMP-SUM setting, of both TRADES settings and of
PGD-AT is restored and attacked with the full cascade
(``adversarial_training_lib.cascade_test``, the experiment's own evaluation).
Reported per setting: mean over seeds with a 95 % t-interval of clean, PGD-20
and cascade robust test accuracy; for the selected ADV-COMP-SUM setting against
the selected TRADES (and against PGD-AT), the per-seed paired differences: mean,
95 % t-interval, paired t-test and exact Wilcoxon signed-rank p-values.

Resumable: each setting's runs live in ``<workdir>/<setting>``; finished runs
and finished cascades (``<run>/full_cascade.json``) are not redone. The Markdown report goes to ``--out``::

  PYTHONPATH=. .venv/bin/python benchmarks/adversarial_comparison.py \
      --workdir runs/adv_comparison --out benchmarks/results/adversarial_comparison.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _machine  # noqa: E402

# nu per tau: nu*(h)/8 with nu* measured on digits (module doc).
NU_BY_TAU = {0.5: 0.3, 1.0: 0.1}
RHOS = (1.0, 4.0)
TRADES_BETAS = (1.0, 6.0)
# AutoAttack 'standard' (the members of the attack preset 'aa_standard').
FULL_CASCADE = ("apgd_ce", "apgd_t", "fab_t", "square")


def settings() -> list[dict[str, Any]]:
  """Every setting: a name, a label and its config overrides."""
  out: list[dict[str, Any]] = [
      {"name": "pgd_at", "label": "PGD-AT", "family": "pgd_at",
       "overrides": {"methods": ("pgd_at",)}}]
  for beta in TRADES_BETAS:
    out.append({"name": f"trades_beta{beta:g}", "label": f"TRADES β={beta:g}",
                "family": "trades",
                "overrides": {"methods": ("trades",), "trades.beta": beta}})
  for tau, nu in NU_BY_TAU.items():
    for rho in RHOS:
      out.append({
          "name": f"adv_comp_sum_tau{tau:g}_nu{nu:g}_rho{rho:g}",
          "label": f"ADV-COMP-SUM τ={tau:g} ν={nu:g} ρ={rho:g}",
          "family": "adv_comp_sum",
          "overrides": {"methods": ("adv_comp_sum",),
                        "adv_comp_sum.taus": (tau,), "adv_comp_sum.nu": nu,
                        "adv_comp_sum.rho": rho}})
  return out


def build_config(overrides: Mapping[str, Any], num_seeds: int):
  """The digits preset with the full cascade, ``num_seeds`` seeds and
  ``overrides`` (dotted field -> value)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from configs import adversarial_training  # pylint: disable=g-import-not-at-top

  config = adversarial_training.get_config("digits")
  config.seeds = tuple(range(num_seeds))
  config.cascade = ()  # the full cascade runs in phase 2 (module doc)
  config.cascade_overrides = ml_collections.ConfigDict()
  config.progress = False
  config.tensorboard = False
  for field, value in overrides.items():
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def full_cascade(config, results: Mapping[str, Any], setting_dir: str
                 ) -> None:
  """Adds 'robust_cascade' etc. of the full cascade to every run record of
  ``results`` (cached in ``<run>/full_cascade.json``)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from compsum_jax import training  # pylint: disable=g-import-not-at-top
  from experiments import adversarial_training_lib as lib  # pylint: disable=g-import-not-at-top

  todo = []
  for record in results["runs"]:
    name = lib.run_name(record["method"], record["tau"], record["seed"])
    path = os.path.join(setting_dir, name, "full_cascade.json")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        record.update(json.load(f))
    else:
      todo.append((record, name, path))
  if not todo:
    return
  eval_config = ml_collections.ConfigDict(config.to_dict())
  eval_config.cascade = FULL_CASCADE
  experiment = lib.Experiment.create(eval_config)
  for record, name, path in todo:
    run = lib.PlannedRun(record["method"], record["tau"], record["seed"])
    state = training.init_train_state(
        experiment.model, experiment.optimizer, rng=run.seed,
        input_shape=experiment.dataset.input_shape,
        hparams=lib.run_hparams(config, run), ema=experiment.use_ema)
    state, best_step, _ = training.restore_best_checkpoint(
        os.path.join(setting_dir, name), state, "val_robust_accuracy")
    if best_step != record["best_step"]:
      raise RuntimeError(f"{name}: best checkpoint {best_step} is not the "
                         f"evaluated one {record['best_step']}")
    start = time.perf_counter()
    out = lib.cascade_test(experiment, state, experiment.dataset.test,
                           run.seed)
    out["full_cascade_seconds"] = time.perf_counter() - start
    if abs(out["cascade_clean_accuracy"] - record["clean_accuracy"]) > 1e-9:
      raise RuntimeError(f"{name}: cascade clean accuracy "
                         f"{out['cascade_clean_accuracy']} differs from the "
                         f"run's {record['clean_accuracy']}")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)
    record.update(out)
    print(f"   {name}: full cascade robust {out['robust_cascade']:.3f} "
          f"({out['full_cascade_seconds']:.0f} s)", flush=True)


def mean_ci(values: Sequence[float], level: float = 0.95
            ) -> tuple[float, float]:
  """Mean and half-width of the two-sided t-interval (n - 1 dof)."""
  x = np.asarray(values, dtype=np.float64)
  if x.size < 2:
    return float(x.mean()), float("nan")
  half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(
      x.size)
  return float(x.mean()), float(half)


def paired_comparison(a: Sequence[float], b: Sequence[float]
                      ) -> dict[str, float]:
  """a − b per seed: mean, 95 % t-interval, paired t and Wilcoxon p-values."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  mean, half = mean_ci(d)
  t_p = float(stats.ttest_rel(a, b).pvalue) if np.any(d != 0) else 1.0
  nonzero = d[d != 0]
  w_p = (float(stats.wilcoxon(nonzero).pvalue) if nonzero.size >= 1
         else 1.0)
  return {"mean": mean, "half": half, "t_p": t_p, "wilcoxon_p": w_p,
          "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
          "n": int(d.size)}


def _records(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  runs = sorted(results["runs"], key=lambda r: r["seed"])
  bad = [r for r in runs if r.get("status") != "ok"]
  if bad:
    raise RuntimeError(f"runs that did not finish: "
                       f"{[(r['method'], r['tau'], r['seed']) for r in bad]}")
  return runs


def _pct(mean: float, half: float) -> str:
  return f"{100 * mean:.1f} ± {100 * half:.1f}"


def best_on_validation(rows: Sequence[dict[str, Any]], family: str
                       ) -> dict[str, Any]:
  """The setting of ``family`` with the highest mean validation robust
  accuracy over seeds (the early-stopping checkpoints')."""
  return max((r for r in rows if r["family"] == family),
             key=lambda r: np.mean([x["val"]["val_robust_accuracy"]
                                    for x in r["runs"]]))


def report(rows: list[dict[str, Any]], meta: Mapping[str, Any]) -> str:
  """The Markdown report of every setting and the paired tests."""
  for row in rows:
    runs = row["runs"]
    row["val"] = mean_ci([r["val"]["val_robust_accuracy"] for r in runs])
    row["clean"] = mean_ci([r["clean_accuracy"] for r in runs])
    cascade = [r["robust_cascade"] for r in runs if "robust_cascade" in r]
    row["robust"] = mean_ci(cascade) if len(cascade) == len(runs) else None
    row["pgd20"] = mean_ci([r["robust_pgd20"] for r in runs])
    final_nu = [r["nu_threshold_history"][-1]["nu_threshold"]
                for r in runs if r.get("nu_threshold_history")]
    row["nu_star"] = (f"{min(map(float, final_nu)):.2f}–"
                      f"{max(map(float, final_nu)):.2f}" if final_nu else "")
  acs, trades, pgd = (best_on_validation(rows, f)
                      for f in ("adv_comp_sum", "trades", "pgd_at"))
  n = len(acs["runs"])
  lines = [
      "# ADV-COMP-SUM against TRADES and PGD-AT on digits: paired seeds, "
      "95 % intervals",
      "",
      f"Command: `{meta['command']}`",
      "",
      f"- run {meta['date']}; machine: {meta['cpu']}, {meta['cores']} "
      f"logical cores; load average at start {meta['load_start']}, at end "
      f"{meta['load_end']}; python {meta['python']}, jax {meta['jax']}",
      f"- run time of the command: {meta['wall']} wall, "
      f"{meta['cpu_time']} CPU (user + sys) for {meta['num_runs']} runs "
      f"({meta['resumed']})",
      f"- {n} seeds per setting, paired (same data split and model "
      "initialisation per seed index in every setting); digits preset "
      "(strided CNN (32, 64) with batch norm, 12 epochs, 5-step ℓ∞ training "
      "attack, ε = 0.1, EMA 0.9, early stopping on validation PGD-40-margin "
      "robust accuracy, 256 held-out digits)",
      "- test: the 360 test digits; cascade = AutoAttack 'standard' "
      "(APGD-CE → APGD-T (9 targets) → FAB-T (9 targets) → Square (5,000 "
      "queries), 100 iterations each, ℓ∞ ε = 0.1, early exit: each stage "
      "attacks the points still robust)",
      "- ± is the half-width of the 95 % t-interval over seeds "
      "(mean ± t₀.₉₇₅,ₙ₋₁·s/√n); ν* is the range over seeds of ν*(h) at the "
      "last evaluation (docs/math.md (10.7), on the 256 validation digits, "
      "sup by 10 PGD steps of the training attack's step size; above it the "
      "constant classifier wins)",
      "",
      "| setting | val robust (selection) | clean | PGD-20 | cascade (AA standard) | ν* (last eval) |",
      "|---|---|---|---|---|---|",
  ]
  for row in rows:
    mark = " **(selected)**" if row in (acs, trades) else ""
    lines.append(
        f"| {row['label']}{mark} | {_pct(*row['val'])} | "
        f"{_pct(*row['clean'])} | {_pct(*row['pgd20'])} | "
        f"{_pct(*row['robust']) if row['robust'] else '— (not selected)'} "
        f"| {row['nu_star']} |")
  lines += ["", "## Paired differences (per seed, test)", "",
            "| comparison | metric | mean difference (95 % CI), points | "
            "wins / losses | paired t p | Wilcoxon p |",
            "|---|---|---|---|---|---|"]
  paired = {}
  for other in (trades, pgd):
    for metric, key in (("clean", "clean_accuracy"),
                        ("cascade robust", "robust_cascade")):
      c = paired_comparison([r[key] for r in acs["runs"]],
                            [r[key] for r in other["runs"]])
      paired[(other["name"], key)] = c
      lines.append(
          f"| {acs['label']} − {other['label']} | {metric} | "
          f"{100 * c['mean']:+.2f} ({100 * (c['mean'] - c['half']):+.2f}, "
          f"{100 * (c['mean'] + c['half']):+.2f}) | {c['wins']} / "
          f"{c['losses']} | {c['t_p']:.3g} | {c['wilcoxon_p']:.3g} |")
  meta["selected"] = {"adv_comp_sum": acs["name"], "trades": trades["name"]}
  meta["paired"] = {f"{k[0]}:{k[1]}": v for k, v in paired.items()}
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_seeds", type=int, default=8)
  parser.add_argument(
      "--cascade", choices=("baselines", "selected"), default="baselines",
      help="full cascade on the selected ADV-COMP-SUM, the selected TRADES "
      "and PGD-AT ('selected'), or also on every other TRADES beta")
  parser.add_argument("--only", default="",
                      help="comma-separated setting names (default: all)")
  args = parser.parse_args()
  if args.num_seeds < 2:
    raise SystemExit(f"--num_seeds must be at least 2, got {args.num_seeds}")
  # A persistent compilation cache: the settings share most programs.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser(
      "~/.cache/compsum_jax/benchmark_compilation_cache"))
  import jax  # pylint: disable=g-import-not-at-top

  from experiments import adversarial_training_lib  # pylint: disable=g-import-not-at-top

  chosen = settings()
  if args.only:
    names = args.only.split(",")
    unknown = set(names) - {s["name"] for s in chosen}
    if unknown:
      raise SystemExit(f"unknown settings {sorted(unknown)}; known: "
                       f"{[s['name'] for s in chosen]}")
    chosen = [s for s in chosen if s["name"] in names]
  load_start = _machine.load_average()
  start = time.perf_counter()
  usage0 = resource.getrusage(resource.RUSAGE_SELF)
  rows = []
  for i, setting in enumerate(chosen):
    config = build_config(setting["overrides"], args.num_seeds)
    t0 = time.perf_counter()
    results = adversarial_training_lib.run(
        config, os.path.join(args.workdir, setting["name"]),
        log=lambda line: print(line, flush=True))
    print(f"== [{i + 1}/{len(chosen)}] {setting['name']}: trained "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    rows.append({**setting, "config": config, "runs": _records(results)})
  # Phase 2: the full cascade on the settings selected on validation and on
  # the baselines (every TRADES beta, PGD-AT).
  selected = {best_on_validation(rows, f)["name"]
              for f in ("adv_comp_sum", "trades", "pgd_at")}
  if args.cascade == "baselines":
    selected |= {r["name"] for r in rows if r["family"] == "trades"}
  for row in rows:
    if row["name"] in selected:
      t0 = time.perf_counter()
      print(f"== full cascade: {row['name']}", flush=True)
      full_cascade(row["config"], {"runs": row["runs"]},
                   os.path.join(args.workdir, row["name"]))
      print(f"== full cascade: {row['name']} done "
            f"({time.perf_counter() - t0:.0f} s)", flush=True)
  usage1 = resource.getrusage(resource.RUSAGE_SELF)
  cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime
                                               - usage0.ru_stime)
  wall = time.perf_counter() - start
  meta = {
      "command": " ".join(["PYTHONPATH=. .venv/bin/python",
                           "benchmarks/adversarial_comparison.py",
                           *sys.argv[1:]]),
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      "cpu": _machine.cpu_model(), "cores": os.cpu_count(),
      "load_start": " / ".join(f"{v:.1f}" for v in load_start),
      "load_end": " / ".join(f"{v:.1f}" for v in _machine.load_average()),
      "python": platform.python_version(), "jax": jax.__version__,
      "wall": f"{wall / 60:.1f} min", "cpu_time": f"{cpu / 60:.1f} min",
      "num_runs": sum(len(r["runs"]) for r in rows),
      "resumed": "this invocation's time; runs finished by an earlier "
                 "invocation were read, not redone",
  }
  text = report(rows, meta)
  with open(args.out, "w", encoding="utf-8") as f:
    f.write(text)
  with open(os.path.splitext(args.out)[0] + ".json", "w",
            encoding="utf-8") as f:
    json.dump({"meta": meta, "settings": [
        {k: v for k, v in r.items() if k not in ("runs", "config")}
        for r in rows]},
              f, indent=1, default=str)
  print(text)


if __name__ == "__main__":
  main()
