"""The command line: a bad config is refused with the field named; simulate runs end to end."""

from __future__ import annotations

import pytest
import yaml

from streamer.cli import main


def test_bad_config_exits_2_naming_every_field(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("learner:\n  lr: -1\n  bogus: 3\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "learner.lr" in err and "learner.bogus" in err and len(err.splitlines()) == 1


def test_simulate_runs_the_engine_on_real_digits(tmp_path, capsys):
    path = tmp_path / "sim.yaml"
    path.write_text(
        "model: {arch: streamer-tiny}\n"
        "learner: {batch_size: 32, steps_per_batch: 1, replay_per_step: 8}\n"
        "evaluation: {probe_fraction: 0.1, eval_every: 100}\n"
        "stream: {dataset: digits, tasks: 2, per_class: 15}\n"
    )
    assert main(["simulate", "--config", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "A_last" in out and "task-0" in out
    assert (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("pretrained", ["missing", "tag"])
def test_an_offline_start_without_its_weights_fails_with_one_line_naming_them(
    pretrained, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = tmp_path / "models" / "open_clip_model.safetensors"
    model = ({"arch": "streamer-tiny", "pretrained": str(weights)} if pretrained == "missing"
             else {"arch": "RN50", "pretrained": "openai", "cache_dir": str(tmp_path)})  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"model": model, "metrics": {"port": 0}}))
    assert main(["run", "--config", str(path)]) == 3  # a file that is not there
    err = capsys.readouterr().err
    assert "cannot start: model.pretrained" in err and err.count("\n") == 1
    assert (str(weights) if pretrained == "missing" else "HF_HUB_OFFLINE") in err
    assert "Air-gapped start" in err and "Traceback" not in err


def test_every_option_of_every_verb_has_help_and_the_epilog_documents_exit_codes():
    from streamer.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    bare = [f"{name} {a.dest}" for name, sub in commands.choices.items()
            for a in sub._actions if not a.help]  # fmt: skip
    assert bare == []
    assert all(word in parser.epilog for word in ("exit codes", "STREAMER_CONFIG", "3  a file"))
    assert "--config" in commands.choices["check-config"].format_help()
