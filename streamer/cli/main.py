"""The `streamer` command: the parser, and the one way every verb fails. A user's mistake is
one line on stderr naming the problem and the fix, with a documented exit code; an internal
error is one line too, and its traceback with --debug."""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from streamer import __version__
from streamer.cli import dev, ops
from streamer.cli.common import EXIT_CODES, FAILED, MISSING, Parser, UserError

OPERATIONS = (
    ops.add_run,
    ops.add_check_config,
    ops.add_explain,
    ops.add_export,
    ops.add_rollback,
    ops.add_verify,
)
DEVELOPMENT = (dev.add_demo, dev.add_simulate, dev.add_produce, dev.add_pretrain, dev.add_broker)
DESCRIPTION = "A daemon that keeps a CLIP model learning from a Kafka topic of image-text pairs."
# Errors of the library that are the user's to fix, looked up only in modules already loaded
# (an error cannot come from a module that is not): (module, class) -> exit code, the fix.
KNOWN = {
    ("streamer.learning.model", "ModelLoadError"): (
        MISSING,
        "check model.arch and model.pretrained (streamer check-config)",
    ),
    ("streamer.intake.manifest", "ManifestError"): (
        MISSING,
        "check the manifest file and the images it names",
    ),
    ("streamer.state.checkpoint", "CheckpointError"): (
        MISSING,
        "point at another checkpoint (or its directory)",
    ),
    ("streamer.dev.datasets", "DatasetError"): (
        MISSING,
        "check the config's stream section (stream.dataset, stream.path)",
    ),
}
MISSING_FILES = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    """Operations verbs, then the development verbs in a group of their own."""
    parser = Parser(
        prog="streamer",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="on an internal error, show its traceback"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="VERB", title="operations"
    )
    for add in OPERATIONS:
        add(commands)
    shown = len(commands._choices_actions)
    for add in DEVELOPMENT:
        add(commands)
    group = parser.add_argument_group("development (the demo harness; not for production)")
    group._group_actions.extend(commands._choices_actions[shown:])
    del commands._choices_actions[shown:]
    for sub in commands.choices.values():
        sub.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="on an internal error, show its traceback",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    # kafka-python 3 loads its protocol schemas with a deprecated importlib API.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"kafka\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"importlib\..*")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        error = exc if isinstance(exc, UserError) else _known(exc)
        if args.debug and not (error is exc and exc.__cause__ is None):
            traceback.print_exception(exc)
        if error is None:
            error = UserError(
                f"internal error: {type(exc).__name__}: {exc}",
                "rerun with --debug for the traceback, and report it",
                FAILED,
            )
        print(f"streamer {args.command}: {' '.join(str(error).split())}", file=sys.stderr)
        return error.code


def _known(exc: Exception) -> UserError | None:
    """A library error the user can fix, as a UserError; None for anything else."""
    if isinstance(exc, MISSING_FILES):
        where = exc.filename if exc.filename is not None else exc
        return UserError(
            f"{exc.strerror or type(exc).__name__}: {where}", "check the path", MISSING
        )
    for (module, name), (code, fix) in KNOWN.items():
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return UserError(str(exc), fix, code)
    return None
