r"""Report of the adversarial-training experiment, from its results.json alone.

Summary over seeds, the markdown table (``results.md``) and the robust-vs-
clean plot (``robust_vs_clean.png``) are pure functions of the results dict
that ``experiments/adversarial_training_lib.py`` writes to ``results.json``.
A finished workdir's report is re-rendered (e.g. after a change of the
table) without training::

  python -m experiments.adversarial_training_report --workdir=/tmp/x

The "±" is the sample standard deviation over seeds (ddof = 1,
``experiments.common.mean_and_std``), the loss comparison's convention; a
row with one seed shows its value and "n = 1".
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

from experiments import common

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "robust_vs_clean.png"

# Display names of the registry's methods (others show their registry name).
METHOD_TITLES = {"standard": "standard", "pgd_at": "PGD-AT",
                 "trades": "TRADES", "adv_comp_sum": "ADV-COMP-SUM"}
NORM_TEX = {"linf": r"\ell_\infty", "l2": r"\ell_2"}


def test_columns(config: Mapping[str, Any]) -> list[str]:
  """'clean_accuracy', 'robust_<attack>' per test attack, 'robust_cascade'."""
  cols = ["clean_accuracy"] + [f"robust_{n}" for n in config["test_attacks"]]
  if config["cascade"]:
    cols.append("robust_cascade")
  return cols


def summarize(runs: Sequence[Mapping[str, Any]], columns: Sequence[str]
              ) -> list[dict[str, Any]]:
  """Per (method, τ): mean and sample std (ddof = 1) over the finished seeds.

  Returns one row per (method, τ), in the order of first appearance, with
  'method', 'tau', 'num_seeds' (finished), 'num_failed', ``<col>`` and
  ``<col>_std`` per column, 'gradient_masking_suspected' (any seed) and
  'num_broken_only_by_gradient_free' (summed over seeds).
  """
  groups: dict[tuple[str, float | None], list[Mapping[str, Any]]] = {}
  for r in runs:
    groups.setdefault((r["method"], r["tau"]), []).append(r)
  rows = []
  for (method, tau), group in groups.items():
    ok = [r for r in group if r.get("status") == "ok"]
    row: dict[str, Any] = {"method": method, "tau": tau,
                           "num_seeds": len(ok),
                           "num_failed": len(group) - len(ok)}
    for col in columns:
      values = [r[col] for r in ok if col in r]
      if values:
        row[col], row[col + "_std"] = common.mean_and_std(values)
    row["gradient_masking_suspected"] = any(
        r.get("gradient_masking_suspected", False) for r in ok)
    row["num_broken_only_by_gradient_free"] = int(sum(
        r.get("num_broken_only_by_gradient_free", 0) for r in ok))
    rows.append(row)
  return rows


def label(row: Mapping[str, Any], *, tex: bool = False) -> str:
  """'standard', 'TRADES', 'ADV-COMP-SUM (τ=0.5)': τ only where swept."""
  name = METHOD_TITLES.get(row["method"], row["method"])
  if row["tau"] is None:
    return name
  tau = rf"$\tau={row['tau']:g}$" if tex else f"τ={row['tau']:g}"
  return f"{name} ({tau})"


def threat_model(config: Mapping[str, Any], *, tex: bool = False) -> str:
  """'linf eps=0.1' (text) or r'$\\ell_\\infty$, $\\varepsilon = 0.1$'."""
  eps = float(config["eps"])
  if tex:
    norm = NORM_TEX.get(config["norm"], config["norm"])
    return rf"${norm}$, $\varepsilon = {eps:.4g}$"
  return f"{config['norm']} eps={eps:.4g}"


def _cell(row: Mapping[str, Any], col: str) -> str:
  """'93.10 ± 0.45' (accuracies in %), '93.10 (n = 1)', or '–' if missing."""
  if col not in row:
    return "–"
  if row["num_seeds"] == 1:
    return f"{100 * row[col]:.2f} (n = 1)"
  return f"{100 * row[col]:.2f} ± {100 * row[col + '_std']:.2f}"


def attack_lines(results: Mapping[str, Any]) -> list[str]:
  """One markdown bullet per robust column: the attack and its settings.

  Test attacks are described by their config entries (preset + overrides);
  the cascade by the stage descriptions its evaluation recorded.
  """
  config = results["config"]
  lines = []
  for name, spec in config["test_attacks"].items():
    settings = ", ".join(f"{k}={v}" for k, v in sorted(spec.items())
                         if k != "preset")
    lines.append(f"- robust_{name}: preset {spec['preset']!r}"
                 + (f" ({settings})" if settings else ""))
  if config.get("cascade"):
    stages = next((r["cascade_attack_configuration"] for r in results["runs"]
                   if "cascade_attack_configuration" in r), None)
    if stages is None:  # results written before stages were recorded
      stages = list(config["cascade"])
    lines.append("- robust_cascade (each stage attacks only the points still "
                 "robust): " + "; ".join(stages))
  return lines


def results_markdown(results: Mapping[str, Any]) -> str:
  """results.md: test accuracies in %, mean ± sample std over seeds."""
  config = results["config"]
  cols = test_columns(config)
  seeds = sorted({r["num_seeds"] for r in results["summary"]})
  n_text = ", ".join(str(n) for n in seeds) or "0"
  lines = [f"# Adversarial training: {config['dataset']}, "
           f"{threat_model(config)}", "",
           f"Test accuracy (%), mean ± sample std (ddof = 1) over n seeds "
           f"(n = {n_text}; a row with n = 1 shows its single value); early "
           f"stopping on validation {config['validation_attack']['preset']} "
           f"robust accuracy ({config['validation_size']} held-out "
           "examples).", "",
           "Masking? counts test points (summed over seeds) that the "
           "gradient-free Square attack broke after every gradient-based "
           "attack had failed on them.", ""]
  rows = []
  for row in results["summary"]:
    seeds_cell = f"{row['num_seeds']}" + (
        f" ({row['num_failed']} failed)" if row["num_failed"] else "")
    masked = row["num_broken_only_by_gradient_free"]
    rows.append([label(row), seeds_cell, *(_cell(row, c) for c in cols),
                 f"YES ({masked} points)" if masked else "no"])
  lines.append(common.markdown_table(["method", "seeds", *cols, "masking?"],
                                     rows).rstrip("\n"))
  lines += ["", "Attacks behind each column:"] + attack_lines(results)
  failed = [r for r in results["runs"] if r.get("status") != "ok"]
  if failed:
    lines += ["", "Failed runs:"] + [
        f"- {label(r)} seed {r['seed']}: {r.get('error')}" for r in failed]
  return "\n".join(lines) + "\n"


def plot_robust_vs_clean(results: Mapping[str, Any], path: str) -> None:
  """Robust (cascade, else the last test attack) vs clean test accuracy.

  One point per (method, τ) at the mean over seeds; error bars are the
  sample std over seeds (none for n = 1).
  """
  config = results["config"]
  robust_col = test_columns(config)[-1]
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6.0, 4.8))
  markers = "osD^v<>ph*"
  seeds = set()
  for i, row in enumerate(results["summary"]):
    if "clean_accuracy" not in row or robust_col not in row:
      continue
    seeds.add(row["num_seeds"])
    ax.errorbar(100 * row["clean_accuracy"], 100 * row[robust_col],
                xerr=100 * row["clean_accuracy_std"],
                yerr=100 * row[robust_col + "_std"],
                fmt=markers[i % len(markers)], capsize=3, markersize=7,
                label=label(row, tex=True))
  attack = robust_col[len("robust_"):]
  if attack == "cascade":
    attack = "cascade " + r" $\to$ ".join(config["cascade"])
  ax.set_xlabel("clean test accuracy (%)")
  ax.set_ylabel("robust test accuracy (%)")
  n_text = ", ".join(str(n) for n in sorted(seeds)) or "0"
  bars = ("error bars: sample std over seeds" if seeds != {1}
          else "one seed: no error bars")
  ax.set_title(f"{config['dataset']}, {threat_model(config, tex=True)}: "
               f"robust vs clean test accuracy\nrobust = correct under "
               f"{attack}\n{bars} (n = {n_text})", fontsize=9)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8, title="method", title_fontsize=8)
  else:  # every run failed: say so instead of an empty legend
    ax.text(0.5, 0.5, "no finished run", ha="center", transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(results: Mapping[str, Any], workdir: str) -> dict[str, str]:
  """Writes results.md and robust_vs_clean.png; returns their paths."""
  paths = {"table": os.path.join(workdir, RESULTS_MD),
           "plot": os.path.join(workdir, RESULTS_PNG)}
  common.write_text(paths["table"], results_markdown(results))
  plot_robust_vs_clean(results, paths["plot"])
  return paths


def read_results(workdir: str) -> dict[str, Any]:
  """The results.json of a finished workdir."""
  path = os.path.join(workdir, RESULTS_JSON)
  if not os.path.exists(path):
    raise ValueError(f"workdir={workdir!r} has no {RESULTS_JSON} (the "
                     "experiment has not finished there)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = flags.FLAGS.workdir
  paths = write_report(read_results(workdir), workdir)
  print(f"wrote {paths['table']} and {paths['plot']}")


if __name__ == "__main__":
  # Defined here, not at import: the training binary has its own --workdir.
  flags.DEFINE_string("workdir", None, "A finished adversarial-training "
                      "workdir (holding results.json).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
