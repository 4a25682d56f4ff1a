"""Command line: parse, load config, build, run. No logic lives here."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamer import __version__, datasets
from streamer.config import load_settings
from streamer.pipeline import build_engine, run_stream
from streamer.report import progress_line, summary_table, write_summary


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
    try:
        settings = load_settings(args.config, _overrides(args.set))
    except ValidationError as exc:
        print(f"invalid config {args.config}:\n{exc}", file=sys.stderr)
        return 2
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser("simulate", help="learn from a dataset stream in-process")
    sim.add_argument("--config", type=Path, required=True)
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sim.add_argument("--out", type=Path, help="directory for summary.txt / summary.json")
    sim.add_argument("--every", type=int, default=20, help="progress line every N steps")
    sim.set_defaults(handler=simulate)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
