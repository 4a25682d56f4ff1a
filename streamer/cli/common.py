"""What every verb shares: exit codes, the one-line user error, --config and --set, loading
the config. A verb is a function `add(commands)` that builds its parser and names its
handler; a handler returns an exit code or raises UserError."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from streamer import logs
from streamer.config import Settings, load_settings
from streamer.config.text import describe_errors

OK = 0
FAILED = 1  # the daemon stopped on a fault, or an internal error (--debug shows the traceback)
USAGE = 2  # a wrong option, or a config that does not parse or validate
MISSING = 3  # a file, directory or checkpoint that is not there or cannot be read
REFUSED = 4  # the operation was refused as asked (e.g. rolling back onto the newest)
EXIT_CODES = f"""exit codes:
  {OK}  done
  {FAILED}  the daemon stopped on a fault, or an internal error (--debug shows the traceback)
  {USAGE}  a wrong option, or a config that does not parse or validate
  {MISSING}  a file, directory or checkpoint that is not there or cannot be read
  {REFUSED}  the operation was refused as asked (the message says why)

environment:
  STREAMER_CONFIG          the config file when --config is not given (the image sets it)
  STREAMER_SECTION__FIELD  any config field, e.g. STREAMER_LEARNER__LR=1e-4 (file < env < --set)
"""
CONFIG_ENV = "STREAMER_CONFIG"


class UserError(Exception):
    """A mistake the user can fix: one line naming the problem and the fix, and an exit code."""

    def __init__(self, problem: str, fix: str, code: int = USAGE) -> None:
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.code = code


class Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr (with where to find the usage), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(USAGE)


def add_verb(
    commands: argparse._SubParsersAction,
    handler: Callable[[argparse.Namespace], int],
    text: str,
    config: bool | None = True,
) -> argparse.ArgumentParser:
    """The verb named after `handler` (check_config: check-config), its docstring as the
    description; --config required (True), optional (False) or absent (None)."""
    sub = commands.add_parser(
        handler.__name__.replace("_", "-"), help=text, description=handler.__doc__
    )
    if config is not None:
        add_config(sub, required=config)
    sub.set_defaults(handler=handler)
    return sub


def add_config(parser: argparse.ArgumentParser, required: bool = True, what: str = "") -> None:
    """--config (default $STREAMER_CONFIG, unless `what` says otherwise) and --set, the same
    on every verb."""
    default = None if what else os.environ.get(CONFIG_ENV)
    what = what or f"default: ${CONFIG_ENV}{', now ' + default if default else ', unset'}"
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        required=required and default is None,
        help=f"the YAML config file ({what})",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set learner.lr=1e-4 (repeatable; wins over the "
        "file and STREAMER_* variables)",
    )


def overrides(pairs: list[str]) -> dict[str, Any]:
    """`section.field=value` pairs; values parsed as YAML scalars."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair!r} is not KEY=VALUE", "write e.g. --set learner.lr=1e-4")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(
                f"--set {pair!r}: the value is not YAML ({_first(exc)})",
                "quote it, e.g. --set key='text'",
            ) from exc
    return out


def load(config: Path | None, pairs: list[str]) -> tuple[Settings | None, list[str]]:
    """The validated config, or None and every problem, one line each. A config file that
    is not there raises UserError (MISSING)."""
    if config is not None and not Path(config).is_file():
        raise UserError(
            f"config file {str(config)!r} is not there",
            f"give an existing file with --config or ${CONFIG_ENV}",
            MISSING,
        )
    try:
        return load_settings(config, overrides(pairs)), []
    except ValidationError as exc:
        return None, describe_errors(exc)
    except yaml.YAMLError as exc:
        return None, [f"not valid YAML: {_first(exc)}"]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [str(exc)]


def settings(args: argparse.Namespace) -> Settings:
    """The validated config (logging configured from it), or a UserError listing every
    problem on one line."""
    loaded, problems = load(args.config, args.set)
    if loaded is None:
        raise UserError(
            f"invalid config {args.config}: " + "; ".join(problems),
            f"fix it (streamer check-config --config {args.config} lists "
            "the problems one per line)",
        )
    logs.configure(loaded.logging.level, loaded.logging.format)
    return loaded


def _first(exc: yaml.YAMLError) -> str:
    """A YAML error's first line, with its position when known."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}" if mark is not None else problem
