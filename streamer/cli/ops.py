"""The operations verbs: run, check-config, explain, export, rollback. Each is an `add_*`
function that builds its parser, and a handler that returns an exit code."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import structlog

from streamer.cli.common import (
    FAILED,
    MISSING,
    REFUSED,
    UserError,
    add_config,
    add_verb,
    load,
    overrides,
    settings,
)


def add_run(commands: argparse._SubParsersAction) -> None:
    add_verb(commands, run, "run the daemon: learn from the configured topic")


def run(args: argparse.Namespace) -> int:
    """The daemon: consume, learn, checkpoint, commit, until SIGTERM. Under torchrun, one
    rank of a job that learns one model (docs/scale-out.md)."""
    from streamer.config.checks import unknown_environment
    from streamer.intake.manifest import ManifestError
    from streamer.learning.model import ModelLoadError
    from streamer.service.daemon import Daemon
    from streamer.service.reload import ConfigWatcher

    config = settings(args)
    for problem in unknown_environment(os.environ):  # ignored by the config: say so once
        structlog.get_logger(__name__).warning("environment variable ignored", problem=problem)
    watcher = ConfigWatcher(args.config, overrides(args.set))
    try:
        daemon = Daemon(config, watcher=watcher)
    except (ModelLoadError, ManifestError) as exc:  # the operator's to fix: say what, exit
        raise UserError(
            f"cannot start: {exc}",
            f"fix the config (streamer check-config --config {args.config})",
            MISSING,
        ) from exc
    try:
        return daemon.run()
    finally:
        daemon.world.close()


def add_check_config(commands: argparse._SubParsersAction) -> None:
    text = "validate a config and what it names; print it or its problems"
    sub = add_verb(commands, check_config, text, config=False)
    sub.add_argument("path", nargs="?", type=Path, help="the config file (same as --config)")


def check_config(args: argparse.Namespace) -> int:
    """Every problem at once: fields that do not validate (with the value given), unknown
    keys (with the nearest known one), files the config names that are not there, STREAMER_*
    variables that name no field. Problems: listed on stdout, exit 2. Otherwise the effective
    config with secrets masked, and its hash."""
    from streamer.config import config_hash
    from streamer.config.checks import missing_files, unknown_environment
    from streamer.config.text import effective

    path = args.path or args.config
    if path is None:
        raise UserError("no config file given", "name it, give --config, or set STREAMER_CONFIG")
    loaded, problems = load(path, args.set)
    problems += missing_files(loaded) if loaded is not None else []
    problems += unknown_environment(os.environ)
    if problems:
        print(f"{path}: {len(problems)} problem(s)", *problems, sep="\n  ")
        raise UserError(
            f"{path}: {len(problems)} problem(s), listed on stdout", "fix them and check again"
        )
    print(effective(loaded), end="")
    print(f"# valid; config hash {config_hash(loaded)}")
    return 0


def add_explain(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(
        commands,
        explain,
        "diagnose a checkpoint: verdict, forgetting, alignment, blame",
        config=None,
    )
    sub.add_argument(
        "checkpoint",
        type=Path,
        help="a ckpt-N directory, a checkpoint "
        "directory (its newest), or a ckpt-N id in --config's checkpoint.dir",
    )
    add_config(sub, required=False, what="default: the config the checkpoint recorded")
    sub.add_argument("--json", action="store_true", help="print the figures as one JSON object")


def explain(args: argparse.Namespace) -> int:
    """The misalignment diagnosis of a checkpoint, from its own probes; no broker needed.
    The first line is the verdict."""
    from streamer.learning.model import ModelLoadError
    from streamer.service.explain import NoCheckpoint, as_json, as_text
    from streamer.service.explain import explain as diagnose

    config = settings(args) if args.config else None
    path = args.checkpoint
    if not path.exists() and config is not None and (config.checkpoint.dir / path).exists():
        path = config.checkpoint.dir / path
    try:
        explained = diagnose(path, config)
    except NoCheckpoint as exc:
        raise UserError(
            str(exc), "give a ckpt-N directory or the directory holding them", MISSING
        ) from exc
    except ModelLoadError as exc:
        raise UserError(
            str(exc),
            "pass --config with the model to load (an absolute model.pretrained path)",
            MISSING,
        ) from exc
    print(json.dumps(as_json(explained)) if args.json else as_text(explained))
    return 0


def add_export(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(commands, export, "export a checkpoint: adapters or merged weights", None)
    sub.add_argument("--checkpoint", default="latest", help="a checkpoint id, or latest")
    sub.add_argument(
        "--format",
        choices=("adapters", "merged"),
        default="merged",
        help="adapters: the LoRA factors; merged: a plain open_clip file",
    )
    sub.add_argument("--blend", type=_unit, default=None, help="WiSE-FT: 0 = base, 1 = trained")
    sub.add_argument("--out", type=Path, required=True, help="directory to write into")
    _checkpoint_options(sub)


def export(args: argparse.Namespace) -> int:
    """A checkpoint as adapters or a merged open_clip file, with its manifest."""
    from streamer.state.checkpoint import load_latest, read
    from streamer.state.export import ExportError
    from streamer.state.export import export as write_export

    directory = _checkpoint_dir(args)
    if args.checkpoint == "latest":
        ckpt = load_latest(directory)
        if ckpt is None:
            raise UserError(
                f"no readable checkpoint in {directory}",
                "point --checkpoint-dir at the daemon's checkpoint.dir",
                MISSING,
            )
    else:
        ckpt = read(_named_checkpoint(directory, args.checkpoint))
    try:
        manifest = write_export(ckpt, args.out, args.format, args.blend)
    except ExportError as exc:
        raise UserError(
            f"cannot export: {exc}", "give an empty or new --out folder", REFUSED
        ) from exc
    print(
        f"{ckpt.id} exported to {args.out} ({args.format}, blend {manifest['blend']}, "
        f"step {manifest['step']}): {', '.join(manifest['files'])}"
    )
    return 0


def add_rollback(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(commands, rollback, "make an earlier checkpoint's model current", None)
    sub.add_argument("--to", required=True, help="the checkpoint id to roll back to")
    sub.add_argument(
        "--force",
        action="store_true",
        help="even while a daemon holds the checkpoint dir (its next checkpoint would "
        "supersede the rollback: see docs/operations.md)",
    )
    _checkpoint_options(sub)


def rollback(args: argparse.Namespace) -> int:
    """On a stopped daemon's checkpoints: the model of --to, the offsets and counts of now.
    Refused while a daemon holds the directory, unless --force (docs/operations.md)."""
    from streamer.state.rollback import RollbackError, rollback_offline

    directory = _checkpoint_dir(args)
    _named_checkpoint(directory, args.to)
    try:
        written = rollback_offline(directory, args.to, force=args.force)
    except RollbackError as exc:
        raise UserError(
            f"cannot roll back: {exc}", "stop the daemon, or pick another --to", REFUSED
        ) from exc
    print(f"rolled back to {args.to} as {written}; the daemon resumes from it on its next start")
    return 0


def add_verify(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(commands, verify, "check an export or published version's files", None)
    sub.add_argument("path", help="an export folder, versions/vN, or a store URL (its latest)")


def verify(args: argparse.Namespace) -> int:
    """An export or published version against its manifest: every file, every sha256.
    Exit 1 when a file does not match, 3 when there is nothing to verify."""
    from streamer.state import verify as v

    try:
        manifest = v.verify(args.path)
    except v.NothingToVerify as exc:
        raise UserError(f"nothing to verify: {exc}", "give an export or version folder",
                        MISSING) from exc  # fmt: skip
    except (v.VerifyError, OSError) as exc:
        raise UserError(f"verification failed: {exc}", "do not serve it; publish again",
                        FAILED) from exc  # fmt: skip
    print(f"{args.path}: {len(manifest['files'])} files match ({manifest.get('checkpoint')})")
    return 0


def _checkpoint_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--checkpoint-dir", type=Path, help="default: the config's checkpoint.dir")
    add_config(sub, required=False)


def _checkpoint_dir(args: argparse.Namespace) -> Path:
    """--checkpoint-dir, else the config's checkpoint.dir; it must exist."""
    if args.checkpoint_dir is not None:
        directory = args.checkpoint_dir
    elif args.config is not None:
        directory = settings(args).checkpoint.dir
    else:
        raise UserError("no checkpoint directory", "give --checkpoint-dir or --config")
    if not directory.is_dir():
        raise UserError(
            f"checkpoint directory {str(directory)!r} is not there",
            "give the daemon's checkpoint.dir",
            MISSING,
        )
    return directory


def _named_checkpoint(directory: Path, name: str) -> Path:
    """`directory/name`, which must hold a checkpoint; else the ids that are there."""
    from streamer.state.checkpoint import complete_checkpoints

    path = directory / name
    if not (path / "meta.json").is_file():
        there = ", ".join(p.name for p in complete_checkpoints(directory)) or "none"
        raise UserError(
            f"no checkpoint {name!r} in {directory}",
            f"give one of the ids there ({there})",
            MISSING,
        )
    return path


def _unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--blend must be a number in [0, 1], got {text}")
    return value
