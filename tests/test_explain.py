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


def test_explain_opens_with_a_verdict_and_gives_json_from_another_directory(
    tmp_path, digit_stream, capsys, monkeypatch
):
    import json

    import torch

    from streamer.config import ModelConfig
    from streamer.learning.model import ClipModel

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    ClipModel(ModelConfig(arch="streamer-tiny"), torch.device("cpu")).save_merged(
        work / "base.safetensors"
    )
    monkeypatch.chdir(work)  # the daemon ran here, with paths relative to it
    records = _records(digit_stream[:96])
    settings = _settings(tmp_path, evaluation={"probe_fraction": 0.2, "min_probes": 4},
                         model={"pretrained": "base.safetensors"},
                         checkpoint={"dir": "ckpt", "every_steps": 2})  # fmt: skip
    Run(settings, MemorySource(records, lambda raw: None)).until(_all(len(records)))
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["explain", str(work / "ckpt")]) == 0
    out = capsys.readouterr().out.splitlines()
    verdict = out[out.index(next(line for line in out if line.startswith("ckpt-"))) - 1]
    assert verdict.startswith(("aligned;", "MISALIGNED", "over the misalignment", "alignment n"))
    assert "forgetting" in verdict
    assert main(["explain", str(work / "ckpt"), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert figures["verdict"] == verdict and figures["checkpoint"].startswith("ckpt-")
    assert "step 0" in figures["matrix"] and "a_last" in figures["report"]


def test_a_checkpoint_records_the_config_with_absolute_paths(tmp_path):
    from streamer.config.checks import anchored

    settings = _settings(tmp_path, checkpoint={"dir": "ckpt"},
                         model={"pretrained": "w/base.safetensors"})  # fmt: skip
    fixed = anchored(settings, tmp_path)
    assert fixed.checkpoint.dir == tmp_path / "ckpt"
    assert fixed.model.pretrained == str(tmp_path / "w/base.safetensors")
    assert anchored(fixed, tmp_path / "other") == fixed  # absolute paths stay
