"""Machine description shared by the benchmark scripts (run by hand)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo, else what platform reports."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> tuple[float, float, float]:
  """1/5/15-minute load averages (NaN where the OS does not report them)."""
  try:
    return os.getloadavg()
  except (AttributeError, OSError):
    return (float("nan"),) * 3


def write_report(path: str, lines: list[str]) -> None:
  """Writes a benchmark's markdown lines to ``path`` and prints them."""
  text = "\n".join(lines) + "\n"
  with open(path, "w", encoding="utf-8") as fh:
    fh.write(text)
  print(text)
