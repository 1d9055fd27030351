"""Tests of experiments/cli.py: one-line config errors, exit 2, --help.

Each case runs a small absl binary in a subprocess (absl + ml_collections +
configs only, no JAX), as a user would run an experiment.
"""

import pathlib
import subprocess
import sys
import textwrap

import pytest

from configs import loss_comparison as presets
from experiments import cli

REPO = pathlib.Path(__file__).resolve().parents[1]

BINARY = textwrap.dedent('''
    """Test binary: prints the config's taus."""
    import sys
    from absl import flags
    from configs import loss_comparison as presets
    from experiments import cli

    default = None if sys.argv[1] == "none" else "configs/loss_comparison.py:smoke"
    del sys.argv[1]
    _CONFIG = cli.define_config_file("config", default, "config:preset")
    _WORKDIR = flags.DEFINE_string("workdir", "/tmp/unused", "run dir")

    def main(argv):
      config = _CONFIG.value
      with cli.config_errors():
        if config.num_epochs < 1:
          raise ValueError(f"num_epochs must be >= 1, got "
                           f"num_epochs={config.num_epochs}")
      print("TAUS", tuple(config.taus))

    cli.run(main, config_module=presets, doc=__doc__)
''')


def _run(default, *args):
  return subprocess.run([sys.executable, "-c", BINARY, default, *args],
                        cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("default,args", [
    ("smoke", ["--config.tauss=1"]),
    ("none", ["--config=configs/loss_comparison.py:smoke", "--config.tauss=1"]),
])
def test_config_typo_is_one_line_with_suggestion_and_exit_2(default, args):
  result = _run(default, *args)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert '"tauss"' in lines[0] and 'did you mean "taus"' in lines[0]
  assert "TAUS" not in result.stdout


def test_bad_value_and_unknown_preset_are_one_line_exit_2():
  result = _run("smoke", "--config.num_epochs=0")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      result.stderr.strip()]
  assert "num_epochs must be >= 1, got num_epochs=0" in result.stderr
  result = _run("none", "--config=configs/loss_comparison.py:nope")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert "unknown loss_comparison preset 'nope'" in result.stderr
  result = _run("smoke", "--config.num_epochs=abc")
  assert result.returncode == 2
  assert "abc" in result.stderr and "Traceback" not in result.stderr


def test_valid_override_still_runs():
  result = _run("smoke", "--config.taus=0.5,2")
  assert result.returncode == 0, result.stderr
  assert "TAUS (0.5, 2" in result.stdout


def test_help_lists_presets_and_fields_and_exits_0():
  result = _run("none", "--help")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "Test binary" in out
  for name in presets.PRESETS:
    assert name in out
  # Every leaf field of the default preset is listed with its default.
  config = presets.get_config(None)
  assert f"--config.num_epochs = {config.num_epochs!r}" in out
  assert "--config.optimizer.learning_rate = " in out
  assert "--config.taus = " in out


def test_one_line_config_error_messages():
  error = AttributeError('\'tauss\'\nDid you mean "taus" instead of "tauss"?')
  assert cli.one_line_config_error(error) == (
      'no config field "tauss"; did you mean "taus"?')
  assert cli.one_line_config_error(KeyError("'seedz'")) == (
      "no config field 'seedz'")
  wrapped = ValueError("Error whilst parsing config file:\n\n  Traceback:\n"
                       "    File x\n  ValueError: unknown preset 'q'")
  assert cli.one_line_config_error(wrapped) == "unknown preset 'q'"
