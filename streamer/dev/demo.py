"""`streamer demo`: the whole job end to end on the embedded broker with real images.

Starts Tansu, publishes a class-incremental dataset stream, runs the daemon on it with a
progress display and live metrics, then writes the summary and a plot under --out.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import structlog

from streamer.config import Settings
from streamer.dev import compare, datasets
from streamer.dev.broker import EmbeddedBroker, free_port
from streamer.dev.produce import publish
from streamer.dev.report import progress_line, summary_table, write_summary
from streamer.service.daemon import Daemon
from streamer.service.pipeline import Outcome

log = structlog.get_logger(__name__)


def with_fallback_dataset(settings: Settings) -> Settings:
    """Fashion-MNIST when Debian's package is there, else scikit-learn's bundled digits."""
    if settings.stream.dataset == "fashion-mnist" and not datasets.FASHION_MNIST_DIR.exists():
        print("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): using digits")
        stream = settings.stream.model_copy(update={"dataset": "digits", "per_class": None})
        return settings.model_copy(update={"stream": stream})
    return settings


def run_demo(settings: Settings, out: Path, every: int = 10, compare_plain: bool = True) -> int:
    """The daemon (the config's recipe) on the embedded broker, then, unless `compare_plain`
    is off, plain fine-tuning on the same stream; both side by side."""
    settings = with_fallback_dataset(settings)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # each demo starts from scratch
    samples = list(datasets.stream(settings.stream))
    with EmbeddedBroker(log_path=out / "broker.log") as broker:
        settings = _local(settings, broker.bootstrap, out)
        ends = {}
        producer = threading.Thread(
            target=lambda: ends.update(publish(settings.kafka, samples)), daemon=True
        )
        producer.start()
        history: list[tuple[int, dict[str, float]]] = []
        started = time.monotonic()

        def on_step(outcome: Outcome, daemon: Daemon) -> None:
            trained = daemon.ledger.counts["trained"]
            if outcome.report is not None:
                history.append((trained, dict(outcome.report.accuracy)))
            if outcome.report is not None or outcome.result.step % every == 0:
                rate = trained / (time.monotonic() - started)
                print(progress_line(outcome.result, trained, rate, outcome.report), flush=True)
            if daemon.ledger.accounted >= len(samples):
                daemon.stop.set()  # every record accounted for: checkpoint, commit, exit

        daemon = Daemon(settings, on_step=on_step)
        url = f"http://127.0.0.1:{settings.metrics.port}/metrics"
        print(f"{len(samples)} {settings.stream.dataset} records -> {settings.kafka.topic} "
              f"on {broker.bootstrap}; metrics on {url}")  # fmt: skip
        code = daemon.run()
        seconds = time.monotonic() - started
    final = daemon.engine.evaluate()  # the served model, as the daemon evaluates it
    history.append((daemon.ledger.counts["trained"], dict(final.accuracy)))
    print("\n" + summary_table(daemon.engine.evaluator.matrix, final))
    counts = daemon.ledger.counts
    print(f"\n{counts['trained']} trained, {counts['probes']} probes in {seconds:.0f} s "
          f"({counts['trained'] / seconds:.1f} samples/s); "
          f"last checkpoint {daemon.persistence.last}")  # fmt: skip
    runs = [compare.finish(compare.RunResult("streamer", final, history), daemon.engine)]
    if compare_plain:
        print("\nThe same stream, plain fine-tuning (CLIP loss, no replay), in process ...")
        runs.append(compare.run_in_process("fine-tuning", compare.plain_finetuning(settings),
                                           samples))  # fmt: skip
    print("\n" + compare.side_by_side(runs))
    write_summary(out, daemon.engine.evaluator.matrix, final, seconds,
                  {r.name: compare.figures(r) for r in runs})  # fmt: skip
    starts = compare.task_starts(samples, daemon.engine.evaluator.is_probe)
    compare.plot(runs, starts, out / "accuracy.png")
    print(f"summary: {out}/summary.txt  plot: {out}/accuracy.png")
    return code


def _local(settings: Settings, bootstrap: str, out: Path) -> Settings:
    kafka = settings.kafka.model_copy(update={"bootstrap_servers": (bootstrap,)})
    checkpoint = settings.checkpoint.model_copy(update={"dir": out / "checkpoints"})
    metrics = settings.metrics.model_copy(update={"host": "127.0.0.1", "port": _port(8439)})
    update = {"kafka": kafka, "checkpoint": checkpoint, "metrics": metrics}
    return settings.model_copy(update=update)


def _port(preferred: int) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()
