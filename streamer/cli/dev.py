"""The development verbs, the demo harness: demo, simulate, produce, pretrain, broker. Not for
production; each is an `add_*` function and a handler, as the operations verbs."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path

from streamer.cli.common import add_verb, settings


def add_demo(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(commands, demo, "the daemon end to end on the embedded broker with real data")
    sub.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        help="directory for checkpoints, logs, summary (default: demo-out)",
    )


def demo(args: argparse.Namespace) -> int:
    """The main job end to end on the embedded broker with real data."""
    from streamer.dev.demo import run_demo

    return run_demo(settings(args), args.out)


def add_simulate(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(commands, simulate, "learn from a dataset stream in-process")
    sub.add_argument("--out", type=Path, help="directory for summary.txt / summary.json")
    sub.add_argument(
        "--every", type=int, default=20, metavar="N", help="progress line every N steps"
    )


def simulate(args: argparse.Namespace) -> int:
    """The learning engine on an in-process dataset stream, with progress and a summary."""
    from streamer.dev import datasets
    from streamer.dev.report import progress_line, summary_table, write_summary
    from streamer.service.pipeline import build_engine, run_stream

    config = settings(args)
    engine = build_engine(config)
    start, trained = time.monotonic(), 0

    def on_step(result, report) -> None:
        nonlocal trained
        trained += result.samples
        if report is not None or result.step % args.every == 0:
            rate = trained / max(time.monotonic() - start, 1e-9)
            print(progress_line(result, trained, rate, report), flush=True)

    stream = datasets.stream(config.stream)
    final = run_stream(engine, stream, config.learner.batch_size, on_step)
    seconds = time.monotonic() - start
    print("\n" + summary_table(engine.evaluator.matrix, final))
    print(f"\n{trained} samples in {seconds:.0f} s ({trained / seconds:.1f} samples/s)")
    if args.out:
        write_summary(Path(args.out), engine.evaluator.matrix, final, seconds)
        print(f"summary written to {args.out}/summary.txt and summary.json")
    return 0


def add_produce(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(commands, produce, "publish a dataset stream to the configured topic")
    sub.add_argument(
        "--rate", type=float, metavar="PER_S", help="records per second (default: all at once)"
    )
    sub.add_argument("--partitions", type=int, default=1, help="when creating the topic")


def produce(args: argparse.Namespace) -> int:
    """Publish a dataset stream (the config's stream section) to the config's topic."""
    from streamer.dev import datasets
    from streamer.dev.produce import publish

    config = settings(args)
    ends = publish(config.kafka, datasets.stream(config.stream), args.rate, args.partitions)
    total = sum(ends.values())
    print(f"published {total} records to {config.kafka.topic}: {dict(sorted(ends.items()))}")
    return 0


def add_pretrain(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(commands, pretrain, "train a base model offline on the config's stream")
    sub.add_argument("--out", type=Path, required=True, help="directory to write into")
    sub.add_argument("--epochs", type=int, default=1, help="passes over the stream")


def pretrain(args: argparse.Namespace) -> int:
    """A base model trained offline on the config's dataset stream (see dev/pretrain.py)."""
    from streamer.dev.pretrain import pretrain as train_base

    weights = train_base(settings(args), args.out, epochs=args.epochs)
    print(
        f"base model written to {weights} (card: {weights.with_suffix('.json')}, "
        f"reference probes: {args.out / 'reference.jsonl'})"
    )
    return 0


def add_broker(commands: argparse._SubParsersAction) -> None:
    sub = add_verb(commands, broker, "start the embedded Kafka-compatible broker", config=None)
    sub.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    sub.add_argument("--host", default="0.0.0.0", help="address to listen on")
    sub.add_argument("--advertise", default=None, help="host name clients connect to")


def broker(args: argparse.Namespace) -> int:
    """The embedded Kafka-compatible broker, in the foreground; SIGTERM stops it as Ctrl-C."""
    from streamer.dev.broker import EmbeddedBroker

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind: the child stops too
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    with EmbeddedBroker(args.port, host=args.host, advertise=args.advertise) as embedded:
        print(
            f"broker listening on {embedded.bootstrap} (memory only; Ctrl-C stops it)", flush=True
        )
        try:
            return embedded.wait()
        except KeyboardInterrupt:
            return 0
