"""Command-line front of the experiment binaries: config errors in one line.

A typo in a config override (``--config.tauss=1``) makes ml_collections raise
an AttributeError deep inside flag parsing (a 55-line traceback whose one
useful line is 'Did you mean "taus"'); a bad value caught by a config check
is a ValueError with a traceback. For a user both are input errors: this
module prints them as one line and exits with status 2 (usage error), and
``--help`` lists the presets and every config field. Use::

  _CONFIG = cli.define_config_file("config", None, "Config file:preset.")
  ...
  if __name__ == "__main__":
    cli.run(main, config_module=presets, doc=__doc__)

and inside ``main`` wrap the config checks in ``with cli.config_errors():``.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

USAGE_EXIT_CODE = 2
HELP_FLAGS = ("--help", "-h", "-help", "-?", "--helpshort")  # not --helpfull
_CONFIG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError,
                  ValueError)
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"\?')


def one_line_config_error(error: BaseException) -> str:
  """A one-line description of a config/flag error, without traceback.

  ml_collections' unknown-field error ('\\'tauss\\'\\nDid you mean "taus"
  instead of "tauss"?') becomes 'no config field "tauss"; did you mean
  "taus"?'; other errors keep their first meaningful line.
  """
  text = str(error.args[0]) if (isinstance(error, KeyError) and error.args
                                ) else str(error)
  text = text.replace("\\n", "\n")
  match = _DID_YOU_MEAN.search(text)
  if match:
    return (f'no config field "{match.group(2)}"; did you mean '
            f'"{match.group(1)}"?')
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  # absl wraps config-file errors with the file's traceback: keep the error.
  for line in reversed(lines):
    if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line):
      return line.split(": ", 1)[1]
  first = lines[0] if lines else type(error).__name__
  if first.startswith("'") and first.endswith("'") and len(lines) == 1:
    return f"no config field {first}"
  return first


def exit_with_usage_error(message: str) -> NoReturn:
  """Prints ``<program>: error: <message>`` to stderr and exits with 2."""
  program = sys.argv[0].rsplit("/", 1)[-1] if sys.argv else "experiment"
  print(f"{program}: error: {message}", file=sys.stderr, flush=True)
  raise SystemExit(USAGE_EXIT_CODE)


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
  """Turns ValueError/KeyError/AttributeError/TypeError in the block into a
  one-line usage error (exit status 2). Wrap config checks only (not the
  run), so real failures keep their tracebacks."""
  try:
    yield
  except _CONFIG_ERRORS as error:
    exit_with_usage_error(one_line_config_error(error))


def define_config_file(name: str, default: str | None, help_string: str,
                       **kwargs: Any) -> flags.FlagHolder:
  """``config_flags.DEFINE_config_file`` with override errors in one line.

  With a default, ml_collections applies the ``--<name>.field=`` overrides
  of ``sys.argv`` while the flag is defined (at import of the binary), so a
  typo fails there; this catches it.
  """
  with config_errors():
    return config_flags.DEFINE_config_file(name, default, help_string,
                                           **kwargs)


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
  items = []
  for key in sorted(config.keys()):
    value = config[key]
    path = f"{prefix}{key}"
    if hasattr(value, "keys") and hasattr(value, "items"):
      items.extend(_flatten(value, path + "."))
    else:
      items.append((path, value))
  return items


def help_text(config_module: ModuleType, *, doc: str | None = None,
              config_flag: str = "config", preset: str | None = None) -> str:
  """Usage text: ``doc``, the presets and every config field with its default.

  Args:
    config_module: a configs module with ``get_config(arg)`` and, if it has
      presets, a ``PRESETS`` tuple.
    doc: the binary's docstring (usage), printed first.
    config_flag: the name of the config flag (fields are shown as
      ``--<config_flag>.<field>``).
    preset: the preset whose defaults are listed (default: the module's
      default, ``get_config(None)``).
  """
  parts = [doc.strip()] if doc else []
  presets: Sequence[str] = tuple(getattr(config_module, "PRESETS", ()))
  module_file = getattr(config_module, "__file__", config_module.__name__)
  if presets:
    parts.append(f"Presets (--{config_flag}={module_file}:<preset>): "
                 + ", ".join(presets))
  config = config_module.get_config(preset)
  shown = f"preset {preset!r}" if preset else "the default preset"
  lines = [f"Config fields (override with --{config_flag}.<field>=<value>; "
           f"defaults of {shown}):"]
  for path, value in _flatten(config):
    lines.append(f"  --{config_flag}.{path} = {value!r}")
  parts.append("\n".join(lines))
  parts.append("Other flags: --workdir (run directory); --helpfull lists "
               "every absl flag.")
  return "\n\n".join(parts) + "\n"


def make_flags_parser(config_module: ModuleType, *, doc: str | None = None,
                      config_flag: str = "config"
                      ) -> Callable[[list[str]], list[str]]:
  """A ``flags_parser`` for ``absl.app.run``: help and one-line errors.

  ``--help``/``-h`` print :func:`help_text` and exit 0 (``--helpfull`` is
  left to absl); a flag or config-override error prints one line and exits
  with status 2.
  """

  def parse(argv: list[str]) -> list[str]:
    if any(arg in HELP_FLAGS for arg in argv[1:]):
      sys.stdout.write(help_text(config_module, doc=doc,
                                 config_flag=config_flag))
      sys.stdout.flush()
      raise SystemExit(0)
    try:
      return flags.FLAGS(argv)
    except _CONFIG_ERRORS as error:
      exit_with_usage_error(one_line_config_error(error))

  return parse


def run(main: Callable[[list[str]], Any], *, config_module: ModuleType,
        doc: str | None = None, config_flag: str = "config",
        argv: list[str] | None = None) -> None:
  """``absl.app.run(main)`` with :func:`make_flags_parser`'s flag handling."""
  app.run(main, argv=argv, flags_parser=make_flags_parser(
      config_module, doc=doc, config_flag=config_flag))


__all__ = ["USAGE_EXIT_CODE", "config_errors", "define_config_file",
           "exit_with_usage_error", "help_text", "make_flags_parser",
           "one_line_config_error", "run"]
