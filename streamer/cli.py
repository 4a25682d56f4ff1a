"""Command line: parse, load config, build, run. No logic lives here."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamer import __version__, logs
from streamer.config import Settings, config_hash, load_settings
from streamer.config.text import describe_errors, effective


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """`section.field=value` pairs; values parsed as YAML scalars."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def simulate(args: argparse.Namespace) -> int:
    """The learning engine on an in-process dataset stream, with progress and a summary."""
    from streamer.dev import datasets
    from streamer.dev.report import progress_line, summary_table, write_summary
    from streamer.service.pipeline import build_engine, run_stream

    settings = _settings(args)
    engine = build_engine(settings)
    start, trained = time.monotonic(), 0

    def on_step(result, report) -> None:
        nonlocal trained
        trained += result.samples
        if report is not None or result.step % args.every == 0:
            rate = trained / max(time.monotonic() - start, 1e-9)
            print(progress_line(result, trained, rate, report), flush=True)

    stream = datasets.stream(settings.stream)
    final = run_stream(engine, stream, settings.learner.batch_size, on_step)
    seconds = time.monotonic() - start
    print("\n" + summary_table(engine.evaluator.matrix, final))
    print(f"\n{trained} samples in {seconds:.0f} s ({trained / seconds:.1f} samples/s)")
    if args.out:
        write_summary(Path(args.out), engine.evaluator.matrix, final, seconds)
        print(f"summary written to {args.out}/summary.txt and summary.json")
    return 0


def _load(args: argparse.Namespace) -> tuple[Settings | None, list[str]]:
    try:
        return load_settings(args.config, _overrides(args.set)), []
    except ValidationError as exc:
        return None, describe_errors(exc)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return None, [str(exc)]


def _settings(args: argparse.Namespace) -> Settings:
    """The validated config, or exit 2 with every problem and the field it concerns."""
    settings, problems = _load(args)
    if settings is None:
        print(f"invalid config {args.config}:", *problems, sep="\n  ", file=sys.stderr)
        raise SystemExit(2)
    logs.configure(settings.logging.level, settings.logging.format)
    return settings


def check_config(args: argparse.Namespace) -> int:
    """Every problem at once (exit 1), or the effective config with secrets masked."""
    settings, problems = _load(args)
    if settings is None:
        print(f"{args.config}: {len(problems)} problem(s)", *problems, sep="\n  ")
        return 1
    print(effective(settings), end="")
    print(f"# valid; config hash {config_hash(settings)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """The daemon: consume, learn, checkpoint, commit, until SIGTERM. Under torchrun, one
    rank of a job that learns one model (see README, "Scale-out")."""
    from streamer.intake.manifest import ManifestError
    from streamer.learning.model import ModelLoadError
    from streamer.service.daemon import Daemon
    from streamer.service.reload import ConfigWatcher

    watcher = ConfigWatcher(args.config, _overrides(args.set))
    settings = _settings(args)
    try:
        daemon = Daemon(settings, watcher=watcher)
    except (ModelLoadError, ManifestError) as exc:  # the operator's to fix: say what, exit
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        return daemon.run()
    finally:
        daemon.world.close()


def broker(args: argparse.Namespace) -> int:
    """The embedded Kafka-compatible broker, in the foreground; SIGTERM stops it as Ctrl-C."""
    from streamer.dev.broker import EmbeddedBroker

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind: the child stops too
    with EmbeddedBroker(args.port, host=args.host, advertise=args.advertise) as embedded:
        print(f"broker listening on {embedded.bootstrap} (memory only; Ctrl-C stops it)",
              flush=True)  # fmt: skip
        try:
            return embedded.wait()
        except KeyboardInterrupt:
            return 0


def produce(args: argparse.Namespace) -> int:
    """Publish a dataset stream (the config's stream section) to the config's topic."""
    from streamer.dev import datasets
    from streamer.dev.produce import publish

    settings = _settings(args)
    samples = datasets.stream(settings.stream)
    ends = publish(settings.kafka, samples, args.rate, args.partitions)
    total = sum(ends.values())
    print(f"published {total} records to {settings.kafka.topic}: {dict(sorted(ends.items()))}")
    return 0


def pretrain(args: argparse.Namespace) -> int:
    """A base model trained offline on the config's dataset stream (see dev/pretrain.py)."""
    from streamer.dev.pretrain import pretrain as train_base

    weights = train_base(_settings(args), args.out, epochs=args.epochs)
    print(f"base model written to {weights} (card: {weights.with_suffix('.json')}, "
          f"reference probes: {args.out / 'reference.jsonl'})")  # fmt: skip
    return 0


def explain(args: argparse.Namespace) -> int:
    """The misalignment diagnosis of a checkpoint, from its own probes; no broker needed."""
    from streamer.service.explain import explain as diagnose

    settings = _settings(args) if args.config else None
    print(diagnose(args.checkpoint, settings))
    return 0


def _checkpoint_dir(args: argparse.Namespace) -> Path:
    if args.checkpoint_dir is not None:
        return args.checkpoint_dir
    if args.config is None:
        raise SystemExit("give --checkpoint-dir or --config (whose checkpoint.dir is used)")
    return _settings(args).checkpoint.dir


def export(args: argparse.Namespace) -> int:
    """A checkpoint as adapters or a merged open_clip file, with its manifest."""
    from streamer.state.checkpoint import load_latest, read
    from streamer.state.export import ExportError
    from streamer.state.export import export as write_export

    directory = _checkpoint_dir(args)
    ckpt = (
        load_latest(directory) if args.checkpoint == "latest" else read(directory / args.checkpoint)
    )
    if ckpt is None:
        print(f"no readable checkpoint in {directory}", file=sys.stderr)
        return 1
    try:
        manifest = write_export(ckpt, args.out, args.format, args.blend)
    except ExportError as exc:
        print(f"cannot export: {exc}", file=sys.stderr)
        return 2
    print(f"{ckpt.id} exported to {args.out} ({args.format}, blend {manifest['blend']}, "
          f"step {manifest['step']}): {', '.join(manifest['files'])}")  # fmt: skip
    return 0


def rollback(args: argparse.Namespace) -> int:
    """On a stopped daemon's checkpoints: the model of --to, the offsets and counts of now.
    Refused while a daemon holds the directory, unless --force (docs/operations.md)."""
    from streamer.state.rollback import RollbackError, rollback_offline

    try:
        written = rollback_offline(_checkpoint_dir(args), args.to, force=args.force)
    except RollbackError as exc:
        print(f"cannot roll back: {exc}", file=sys.stderr)
        return 1
    print(f"rolled back to {args.to} as {written}; the daemon resumes from it on its next start")
    return 0


def verify(args: argparse.Namespace) -> int:
    """An export or published version against its manifest: every file, every sha256."""
    from streamer.state import verify as v

    try:
        manifest = v.verify(args.path)
    except (v.VerifyError, OSError) as exc:  # 2: nothing there to check; 1: it does not match
        print(f"verification failed: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, v.NothingToVerify) else 1
    print(f"{args.path}: {len(manifest['files'])} files match ({manifest.get('checkpoint')})")
    return 0


def demo(args: argparse.Namespace) -> int:
    """The main job end to end on the embedded broker with real data."""
    from streamer.dev.demo import run_demo

    return run_demo(_settings(args), args.out)


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--blend must be in [0, 1], got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    # kafka-python 3 loads its protocol schemas with a deprecated importlib API.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"kafka\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"importlib\..*")
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="learn from a dataset stream in-process")
    sim.add_argument("--config", type=Path, required=True)
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sim.add_argument("--out", type=Path, help="directory for summary.txt / summary.json")
    sim.add_argument("--every", type=int, default=20, help="progress line every N steps")
    sim.set_defaults(handler=simulate)
    for name, handler, text in (
        ("demo", demo, "the daemon end to end on the embedded broker with real data"),
        ("run", run, "run the daemon: learn from the configured topic"),
        ("produce", produce, "publish a dataset stream to the configured topic"),
        ("pretrain", pretrain, "train a base model offline on the config's dataset stream"),
    ):
        sub = commands.add_parser(name, help=text)
        default = os.environ.get("STREAMER_CONFIG")  # the container sets it
        sub.add_argument("--config", type=Path, required=default is None, default=default)
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        sub.set_defaults(handler=handler)
        if name == "demo":
            sub.add_argument("--out", type=Path, default=Path("demo-out"))
        if name == "pretrain":
            sub.add_argument("--out", type=Path, required=True, help="directory to write into")
            sub.add_argument("--epochs", type=int, default=1, help="passes over the stream")
        if name == "produce":
            sub.add_argument("--rate", type=float, help="records per second (default: all at once)")
            sub.add_argument("--partitions", type=int, default=1, help="when creating the topic")
    check = commands.add_parser("check-config", help="validate a config; print it or its problems")
    check.add_argument("config", type=Path)
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    check.set_defaults(handler=check_config)
    why = commands.add_parser("explain", help="diagnose a checkpoint: forgetting, alignment, blame")
    why.add_argument("checkpoint", type=Path, help="a ckpt-N directory, or a checkpoint dir")
    why.add_argument("--config", type=Path, help="default: the config the checkpoint recorded")
    why.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    why.set_defaults(handler=explain)
    exp = commands.add_parser("export", help="export a checkpoint: adapters or merged weights")
    exp.add_argument("--checkpoint", default="latest", help="a checkpoint id, or latest")
    exp.add_argument("--format", choices=("adapters", "merged"), default="merged")
    exp.add_argument("--blend", type=_unit, default=None, help="WiSE-FT: 0 = base, 1 = trained")
    exp.add_argument("--out", type=Path, required=True, help="directory to write into")
    back = commands.add_parser("rollback", help="make an earlier checkpoint's model current")
    back.add_argument("--to", required=True, help="the checkpoint id to roll back to")
    back.add_argument("--force", action="store_true", help="even if a daemon holds the dir")
    for sub in (exp, back):
        sub.add_argument("--checkpoint-dir", type=Path, help="default: the config's checkpoint.dir")
        sub.add_argument("--config", type=Path, default=os.environ.get("STREAMER_CONFIG"))
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    exp.set_defaults(handler=export)
    back.set_defaults(handler=rollback)
    ver = commands.add_parser("verify", help="check an export or published version's files")
    ver.add_argument("path", help="an export folder, versions/vN, or a store URL (its latest)")
    ver.set_defaults(handler=verify)
    brk = commands.add_parser("broker", help="start the embedded Kafka-compatible broker")
    brk.add_argument("--port", type=int, default=9092)
    brk.add_argument("--host", default="0.0.0.0", help="address to listen on")
    brk.add_argument("--advertise", default=None, help="host name clients connect to")
    brk.set_defaults(handler=broker)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
