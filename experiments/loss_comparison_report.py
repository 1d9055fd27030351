r"""The loss-comparison report: results.md and plots from results.json alone.

Every function here is a pure function of the results dict that
``experiments/loss_comparison_lib.py`` writes to ``results.json``, so a
finished run can be re-rendered (e.g. after a change of the plots)::

  python -m experiments.loss_comparison_report --workdir=runs/demo

re-renders ``runs/demo`` and every ``runs/demo/companion_*`` that holds a
results.json. Spread over seeds is the sample standard deviation (ddof = 1),
stated in every table and figure. Members whose group diverged (status
'nonfinite' in results.json) are listed as failed in results.md and left out
of the statistics and the plots.
"""

from __future__ import annotations

import glob
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from compsum_jax import theory
from experiments import common

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
PLOT_ACCURACY = "accuracy_vs_tau.png"
PLOT_CURVES = "training_curves.png"
PLOT_BOUND = "bound_check.png"
FAILED_CELL = "failed (diverged)"
# One line style per τ, so that curves lying on top of each other stay
# distinguishable (cycled beyond five τ).
_STYLES = (("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"),
           ("P", "--"), ("X", "-."))


def _style(i: int) -> dict[str, Any]:
  marker, linestyle = _STYLES[i % len(_STYLES)]
  return {"marker": marker, "linestyle": linestyle}


def _tau_label(row: Mapping[str, Any]) -> str:
  """'$\\tau=1$ (cross-entropy)' for a per_tau row."""
  return rf"$\tau={row['tau']:g}$ ({row['loss']})"


# ------------------------------------------------------------------ text


def noise_text(results: Mapping[str, Any]) -> str:
  """'no label noise' or 'symmetric label noise 40%' (training labels)."""
  noise = results["dataset"]["label_noise"]
  if not noise or not noise.get("kind") or float(noise["rate"]) == 0.0:
    return "no label noise"
  return f"{noise['kind']} label noise {100 * float(noise['rate']):g}%"


def spread_text(results: Mapping[str, Any]) -> str:
  """'mean ± sample std over n = 3 seeds' for this run."""
  return common.std_caption(results["sweep"]["num_seeds"])


def _devices_text(sweep: Mapping[str, Any]) -> str:
  """' on 4 devices (2 member groups × batch split 2)' or '' on one."""
  count, mesh = sweep["num_devices"], sweep["mesh"]
  if count == 1:
    return ""
  return (f" on {count} devices ({mesh['members']} member groups × batch "
          f"split {mesh['data']})")


def finished_rows(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  """The per_tau rows with numbers (at least one seed of τ finished)."""
  return [row for row in results["per_tau"]
          if row["test_accuracy"] is not None]


def finished_histories(results: Mapping[str, Any], tau: float
                       ) -> list[Mapping[str, Any]]:
  """Histories of the finished members of ``tau`` (failed ones have none)."""
  return [m["history"] for m in results["members"]
          if m["tau"] == tau and "history" in m]


def _pm(stat: Mapping[str, float] | None, scale: float, digits: int) -> str:
  if stat is None:
    return FAILED_CELL
  mean, std = stat["mean"] * scale, stat["std"] * scale
  if not (math.isfinite(mean) and math.isfinite(std)):
    return f"{mean} ± {std}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_table(results: Mapping[str, Any]) -> str:
  """results.md: header facts and the per-τ table (mean ± sample std)."""
  ds, sw = results["dataset"], results["sweep"]
  config = results["config"]
  noise = ds["label_noise"] or {"kind": None, "rate": 0.0}
  lines = [
      "# Loss comparison: comp-sum losses ℓ_τ side by side", "",
      f"- dataset: `{ds['name']}` ({ds['num_train']} train / "
      f"{ds['num_test']} test, {ds['num_classes']} classes); label noise "
      f"on training labels: {noise['kind']} at rate {noise['rate']:g} "
      f"({100 * ds['fraction_train_labels_flipped']:.1f}% flipped); test "
      "labels clean",
      f"- model: `{config['model']['name']}`; optimizer: "
      f"`{config['optimizer']['name']}` lr {config['optimizer']['learning_rate']:g}"
      f" ({config['optimizer']['schedule']}); {sw['num_epochs']} epochs, "
      f"batch {config['batch_size']}",
      f"- {sw['num_members']} members = {len(sw['taus'])} τ × "
      f"{sw['num_seeds']} seeds {sw['seeds']}, trained in '{sw['mode']}' "
      f"mode{_devices_text(sw)}; cells: {spread_text(results)} "
      "(ddof = 1)", ""]
  failed_members = [m for m in results["members"] if "status" in m]
  if failed_members:
    lines[-1:] = [f"- **{len(failed_members)} of {sw['num_members']} members "
                  "FAILED** (their group diverged: NaN/Inf loss or "
                  "gradient); cells are over the finished seeds only (column "
                  "'failed seeds')", ""]
  header = ["τ", "loss", "test accuracy (%)", "final train ℓ_τ",
            "test ℓ_τ", "test CE"]
  if failed_members:
    header.append("failed seeds")
  check = results["bound_check"]
  if check["applicable"]:
    header += ["bound checks", "min slack"]
    check_by_tau = {t["tau"]: t for t in check["per_tau"]}
  rows = []
  for row in results["per_tau"]:
    cells = [f"{row['tau']:g}", row["loss"],
             _pm(row["test_accuracy"], 100.0, 2),
             _pm(row["final_surrogate_loss"], 1.0, 4),
             _pm(row["test_surrogate_loss"], 1.0, 4),
             _pm(row["test_cross_entropy"], 1.0, 4)]
    if failed_members:
      num_failed = row.get("num_failed", 0)
      cells.append(f"{num_failed} of {row['num_seeds'] + num_failed}")
    if check["applicable"]:
      t = check_by_tau.get(row["tau"])
      cells += (["—", "—"] if t is None else [
          f"{t['num_checks'] - t['num_violations']}/{t['num_checks']}"
          " hold", f"{t['min_slack']:.3g}"])
    rows.append(cells)
  text = "\n".join(lines) + "\n" + common.markdown_table(header, rows)
  if failed_members:
    text += "\nFailed members (no numbers; not in the plots):\n" + "".join(
        f"- τ={m['tau']:g} seed {m['seed']} (group {m['group']}): "
        f"{m['error']}\n" for m in failed_members)
  text += "\n" + bound_summary_text(results) + "\n"
  return text


def bound_summary_text(results: Mapping[str, Any]) -> str:
  """One paragraph summarising the H-consistency bound check."""
  check = results["bound_check"]
  if not check["applicable"]:
    return f"Bound check: not applicable ({check['reason']})."
  verdict = ("HOLDS at every checkpoint" if check["holds"] else
             f"VIOLATED {check['num_violations']} times")
  lines = [f"Bound check E[ΔC_0-1] ≤ Γ_τ(E[ΔC_τ]): {verdict} "
           f"({check['num_checks']} checks, min slack "
           f"{check['min_slack']:.4g})."]
  for t in check["per_tau"]:
    lines.append(
        f"  τ={t['tau']:g}: final E[ΔC_0-1]={t['final_zero_one_excess']:.4f}"
        f" ≤ Γ_τ(E[ΔC_τ]={t['final_surrogate_excess']:.4f}) = "
        f"{t['final_bound']:.4f}; {t['num_checks']} checks, min slack "
        f"{t['min_slack']:.4g}")
  return "\n".join(lines)


def console_report(title: str, paths: Mapping[str, str]) -> str:
  """The table of ``paths['table']`` and the list of outputs, for stdout."""
  with open(paths["table"], encoding="utf-8") as f:
    table = f.read()
  lines = [f"\n===== {title} =====", table, "Outputs:"]
  lines += [f"  {name}: {paths[name]}" for name in sorted(paths)]
  return "\n".join(lines)


# -------------------------------------------------------------------- plots


def _dataset_title(results: Mapping[str, Any]) -> str:
  ds = results["dataset"]
  failed = sum("status" in m for m in results["members"])
  omitted = (f"; {failed} failed (diverged) members omitted" if failed
             else "")
  return (f"{ds['name']} ({ds['num_train']} train / {ds['num_test']} test), "
          f"{noise_text(results)}{omitted}")


def plot_accuracy(results: Mapping[str, Any], path: str) -> None:
  """Clean test accuracy against τ: mean over seeds, bars ± sample std."""
  plt = common.pyplot()
  rows = finished_rows(results)
  taus = [r["tau"] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 4))
  if not rows:
    _no_finished_member(ax)
  ax.errorbar(taus, [100 * r["test_accuracy"]["mean"] for r in rows],
              yerr=[100 * r["test_accuracy"]["std"] for r in rows],
              marker="o", capsize=4,
              label=f"{spread_text(results)}")
  for r in rows:
    ax.annotate(r["loss"], (r["tau"], 100 * r["test_accuracy"]["mean"]),
                textcoords="offset points", xytext=(6, 4), ha="left",
                fontsize=7)
  ax.set_xlabel(r"$\tau$ of the comp-sum loss $\ell_\tau$")
  ax.set_ylabel("clean test accuracy (%)")
  ax.set_title(f"{_dataset_title(results)}\nclean test accuracy after "
               f"{results['sweep']['num_epochs']} epochs; error bars: sample "
               f"std over n = {results['sweep']['num_seeds']} seeds",
               fontsize=9)
  if rows:
    ax.legend(fontsize=8, loc="lower left")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _no_finished_member(ax: Any) -> None:
  """Says on ``ax`` that there is nothing to plot (every member failed)."""
  ax.text(0.5, 0.5, "no member finished (every group diverged)",
          ha="center", va="center", transform=ax.transAxes)


def plot_curves(results: Mapping[str, Any], path: str) -> None:
  """Test accuracy and training ℓ_τ against epochs, per τ: mean over seeds,
  shaded band ± sample std."""
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  rows = finished_rows(results)
  for i, row in enumerate(rows):
    tau = row["tau"]
    hist = finished_histories(results, tau)
    epochs = hist[0]["epoch"]
    for ax, key, scale in ((axes[0], "test_accuracy", 100.0),
                           (axes[1], "train_loss", 1.0)):
      values = scale * np.asarray([h[key] for h in hist], np.float64)
      mean = values.mean(0)
      std = values.std(0, ddof=1) if len(values) > 1 else 0.0 * mean
      (line,) = ax.plot(epochs, mean, label=_tau_label(row), markersize=4,
                        **_style(i))
      ax.fill_between(epochs, mean - std, mean + std, alpha=0.15,
                      color=line.get_color())
  axes[0].set_ylabel("clean test accuracy (%)")
  axes[0].set_title("clean test accuracy", fontsize=9)
  axes[1].set_ylabel(r"$\ell_\tau$ on the training labels (log scale)")
  axes[1].set_title(r"training loss $\ell_\tau$ (each member's own $\tau$)",
                    fontsize=9)
  axes[1].set_yscale("log")
  for ax in axes:
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if rows:
      ax.legend(fontsize=7)
    else:
      _no_finished_member(ax)
  fig.suptitle(f"{_dataset_title(results)}: lines = mean, shaded bands = ± "
               f"sample std over n = {results['sweep']['num_seeds']} seeds",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_bound(results: Mapping[str, Any], path: str) -> None:
  """Every checkpoint (E[ΔC_τ], E[ΔC_0-1]) against the Γ_τ curve, per τ."""
  plt = common.pyplot()
  checked = {t["tau"] for t in results["bound_check"]["per_tau"]}
  rows = [row for row in results["per_tau"] if row["tau"] in checked]
  n = results["dataset"]["num_classes"]
  fig, axes = plt.subplots(1, len(rows), figsize=(3.8 * len(rows), 4.2),
                           squeeze=False, layout="constrained")
  for ax, row in zip(axes[0], rows, strict=True):
    tau = row["tau"]
    hist = finished_histories(results, tau)
    s = np.concatenate([h["surrogate_excess"] for h in hist])
    z = np.concatenate([h["zero_one_excess"] for h in hist])
    e = np.concatenate([h["epoch"] for h in hist])
    grid = np.linspace(0.0, max(float(s.max()) * 1.15, 1e-6), 200)
    ax.plot(grid, theory.gamma_curve(grid, tau, n), "k-",
            label=r"bound $\Gamma_\tau(s)$")
    points = ax.scatter(s, z, c=e, cmap="viridis", s=18,
                        label="checkpoints (colour: epoch)")
    ax.set_title(_tau_label(row), fontsize=9)
    ax.set_xlabel(r"surrogate excess $s = E[\Delta C_\tau]$")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
  axes[0][0].set_ylabel(r"zero-one excess $E[\Delta C_{0\text{-}1}]$")
  fig.colorbar(points, ax=axes[0].tolist(), label="epoch", shrink=0.8)
  check = results["bound_check"]
  verdict = ("holds at all" if check["holds"] else
             f"violated at {check['num_violations']} of")
  fig.suptitle(
      f"{_dataset_title(results)}: H-consistency bound "
      r"$E[\Delta C_{0\text{-}1}] \leq \Gamma_\tau(E[\Delta C_\tau])$ on "
      f"the test inputs with exact posteriors\n{verdict} "
      f"{check['num_checks']} checks (one point per member and evaluation; "
      f"n = {results['sweep']['num_seeds']} seeds per τ)", fontsize=9)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def write_report(results: Mapping[str, Any], workdir: str
                 ) -> dict[str, str]:
  """Writes results.md and the plots of ``results`` into ``workdir``.

  Returns:
    {name: path} of results.json and of every file in ``results['files']``.
  """
  paths = {name: os.path.join(workdir, rel)
           for name, rel in results["files"].items()}
  common.write_text(paths["table"], results_table(results))
  plot_accuracy(results, paths["accuracy_plot"])
  plot_curves(results, paths["curves_plot"])
  if "bound_plot" in paths:
    plot_bound(results, paths["bound_plot"])
  return {"results": os.path.join(workdir, RESULTS_FILE), **paths}


def rerender(workdir: str) -> list[dict[str, str]]:
  """Re-renders ``workdir`` and its ``companion_*`` runs from results.json.

  Raises:
    FileNotFoundError: ``workdir`` holds no results.json.
  """
  main = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(main):
    raise FileNotFoundError(f"no {RESULTS_FILE} in workdir={workdir!r}; run "
                            "experiments.loss_comparison there first")
  dirs = [workdir] + sorted(
      os.path.dirname(p) for p in
      glob.glob(os.path.join(workdir, "companion_*", RESULTS_FILE)))
  return [write_report(common.read_json(os.path.join(d, RESULTS_FILE)), d)
          for d in dirs]


def main(argv: list[str]) -> None:
  from absl import app  # pylint: disable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for paths in rerender(_WORKDIR.value):
    for name in sorted(paths):
      print(f"{name}: {paths[name]}")
  sys.stdout.flush()


if __name__ == "__main__":
  from absl import app, flags

  _WORKDIR = flags.DEFINE_string(
      "workdir", None, "A finished loss_comparison workdir.", required=True)
  app.run(main)
