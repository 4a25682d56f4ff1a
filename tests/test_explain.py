"""`streamer explain`: a checkpoint's diagnosis from its own probes, no broker needed."""

from __future__ import annotations

from streamer.cli import main
from streamer.intake.source import MemorySource

from .test_daemon import Run, _all, _records, _settings


def test_explain_prints_the_diagnosis_and_the_blocks_of_a_daemons_checkpoint(
    tmp_path, digit_stream, capsys
):
    records = _records(digit_stream[:160])
    settings = _settings(tmp_path, evaluation={"probe_fraction": 0.2, "min_probes": 4})
    source = MemorySource(records, lambda raw: None)
    run = Run(settings, source)
    run.until(_all(len(records)))
    assert main(["explain", str(tmp_path / "ckpt")]) == 0  # the newest, its own config
    out = capsys.readouterr().out
    out = out[out.index("ckpt-0") :]  # after the daemon's own log lines
    assert "step 0" in out and "alignment deficit" in out
    assert "tower swap accuracy" in out and "all classes, largest deficit first" in out
    assert "image tower: images alone separate" in out and "collapsed" in out
    assert "blocks (tower block" in out and "image 0:" in out and "text 0:" in out
