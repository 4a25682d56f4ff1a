"""Live config: accepted changes take effect between steps; bad ones change nothing."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import yaml

from streamer import logs
from streamer.config import config_hash, load_settings
from streamer.service.daemon import Daemon
from streamer.service.reload import ConfigWatcher

BASE = {
    "model": {"arch": "streamer-tiny"},
    "learner": {"lr": 0.0005, "batch_size": 16},
    "kafka": {"topic": "pairs"},
    "metrics": {"port": 0},
}


def _write(path: Path, data: dict | str) -> None:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))


@pytest.fixture
def daemon(tmp_path) -> Daemon:
    config = tmp_path / "config.yaml"
    _write(config, {**BASE, "checkpoint": {"dir": str(tmp_path / "ckpt")}})
    watcher = ConfigWatcher(config, {}, poll_seconds=0)
    return Daemon(load_settings(config), watcher=watcher)


def _step_boundary(daemon: Daemon) -> None:
    """What the run loop does between steps: reload when the watcher saw a change."""
    if daemon.watcher.changed():
        daemon.reload()


def _sample(daemon: Daemon, name: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(name)


def _changed(daemon: Daemon, **sections) -> dict:
    data = {**BASE, "checkpoint": {"dir": str(daemon.settings.checkpoint.dir)}}
    for key, fields in sections.items():
        data[key] = {**data.get(key, {}), **fields}
    return data


def test_a_learning_rate_change_reaches_the_optimizer_and_the_metric(daemon):
    _write(daemon.watcher.path, _changed(daemon, learner={"lr": 0.01, "steps_per_batch": 1}))
    _step_boundary(daemon)
    assert daemon.engine.learner.optimizer.param_groups[0]["lr"] == 0.01
    assert daemon.engine.learner.cfg.steps_per_batch == 1
    assert _sample(daemon, "streamer_train_learning_rate") == 0.01
    assert _sample(daemon, "streamer_config_last_reload_successful") == 1
    new_hash = config_hash(daemon.settings)
    assert daemon.metrics.registry.get_sample_value("streamer_config_info", {"hash": new_hash})


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("learner: [unclosed\n", "config.yaml"),
        ({"learner": {"lr": "fast"}}, "learner.lr"),
        ({"learner": {"lr": 5.0}}, "learner.lr"),
        ({"model": {"arch": "streamer-demo"}}, "model.arch"),
        ({"kafka": {"topic": "elsewhere"}}, "kafka.topic"),
        ({"replay": {"capacity": 10}}, "replay.capacity"),
    ],
)
def test_a_bad_reload_keeps_the_old_config_and_names_the_field(daemon, content, field):
    out = io.StringIO()
    logs.configure("INFO", "json", out)
    before = daemon.settings
    if isinstance(content, dict):
        content = _changed(daemon, **content)
    _write(daemon.watcher.path, content)
    _step_boundary(daemon)
    assert daemon.settings is before
    assert daemon.engine.learner.optimizer.param_groups[0]["lr"] == 0.0005
    assert _sample(daemon, "streamer_config_last_reload_successful") == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    rejected = [line for line in lines if line["event"].startswith("config reload rejected")]
    assert rejected and any(field in problem for problem in rejected[0]["problems"])


def test_a_kubernetes_symlink_swap_of_the_config_directory_triggers_a_reload(tmp_path):
    # ConfigMap volume layout: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>
    mount = tmp_path / "config"
    first, second = mount / "..2026_11_23_10_00_00.1", mount / "..2026_11_23_10_05_00.2"
    first.mkdir(parents=True)
    second.mkdir()
    data = {**BASE, "checkpoint": {"dir": str(tmp_path / "ckpt")}}
    _write(first / "config.yaml", data)
    os.symlink(first.name, mount / "..data")
    os.symlink("..data/config.yaml", mount / "config.yaml")
    watcher = ConfigWatcher(mount / "config.yaml", {}, poll_seconds=0)
    daemon = Daemon(load_settings(mount / "config.yaml"), watcher=watcher)
    assert not watcher.changed()
    _write(second / "config.yaml", {**data, "learner": {"lr": 0.003, "batch_size": 16}})
    os.symlink(second.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")  # the atomic swap kubelet does
    _step_boundary(daemon)
    assert daemon.settings.learner.lr == 0.003
    assert daemon.engine.learner.optimizer.param_groups[0]["lr"] == 0.003


def test_sighup_asks_for_a_reload_even_without_a_content_change(daemon):
    assert not daemon.watcher.changed()
    daemon.watcher.request()
    assert daemon.watcher.changed()


def test_environment_overrides_survive_a_reload(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMER_LEARNER__WEIGHT_DECAY", "0.1")
    config = tmp_path / "config.yaml"
    _write(config, {**BASE, "checkpoint": {"dir": str(tmp_path / "ckpt")}})
    daemon = Daemon(load_settings(config), watcher=ConfigWatcher(config, {}, poll_seconds=0))
    _write(config, {**BASE, "checkpoint": {"dir": str(tmp_path / "ckpt")},
                    "learner": {"lr": 0.002, "batch_size": 16}})  # fmt: skip
    _step_boundary(daemon)
    assert daemon.settings.learner.weight_decay == 0.1 and daemon.settings.learner.lr == 0.002


def test_secrets_compare_by_value_and_never_reach_the_log(daemon):
    out = io.StringIO()
    logs.configure("INFO", "json", out)
    kafka = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
             "sasl_username": "u", "sasl_password": "first-secret"}  # fmt: skip
    daemon.settings = load_settings(
        daemon.watcher.path, {f"kafka.{k}": v for k, v in kafka.items()}
    )
    _write(daemon.watcher.path, _changed(daemon, kafka={**kafka, "sasl_password": "second-secret"}))
    _step_boundary(daemon)  # a new password is a change (restart-only), though both show masked
    assert daemon.settings.kafka.sasl_password.get_secret_value() == "first-secret"
    _write(daemon.watcher.path, _changed(daemon, kafka=kafka, learner={"lr": 0.002}))
    _step_boundary(daemon)
    assert daemon.settings.learner.lr == 0.002
    text = out.getvalue()
    assert "kafka.sasl_password: needs a restart" in text and "learner.lr" in text
    assert "first-secret" not in text and "second-secret" not in text
