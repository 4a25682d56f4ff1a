"""Config validation: unknown keys and bad values are rejected with the field named."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from streamer.config import Settings, load_settings


def test_defaults_follow_the_reference_recipe():
    s = Settings()
    assert (s.learner.loss, s.learner.lr, s.learner.batch_size) == ("sit", 5e-4, 64)
    assert (s.learner.steps_per_batch, s.learner.replay_per_step) == (3, 32)
    assert (s.replay.capacity, s.model.peft.mode, s.model.peft.rank) == (2000, "lora", 4)


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 0.001\n  learning_rate: 0.1\n")
    with pytest.raises(ValidationError, match=r"learner\.learning_rate"):
        load_settings(path)


def test_out_of_range_value_names_the_field():
    with pytest.raises(ValidationError, match=r"evaluation\.probe_fraction"):
        Settings.model_validate({"evaluation": {"probe_fraction": 1.5}})
    with pytest.raises(ValidationError, match="prompt_template"):
        Settings.model_validate({"learner": {"prompt_template": "no placeholder"}})


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 0.001\n")
    s = load_settings(path, {"learner.lr": 0.01, "model.peft.rank": 8})
    assert s.learner.lr == 0.01 and s.model.peft.rank == 8


def test_environment_wins_over_the_file_and_overrides_win_over_both(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  lr: 0.001\n  batch_size: 8\n")
    monkeypatch.setenv("STREAMER_LEARNER__LR", "0.02")
    monkeypatch.setenv("STREAMER_KAFKA__TOPIC", "from-env")
    s = load_settings(path)
    assert (s.learner.lr, s.learner.batch_size, s.kafka.topic) == (0.02, 8, "from-env")
    assert load_settings(path, {"learner.lr": 0.5}).learner.lr == 0.5


def test_a_wrong_environment_value_names_the_field(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMER_REPLAY__CAPACITY", "lots")
    with pytest.raises(ValidationError, match=r"replay\.capacity"):
        load_settings(None)


def test_check_config_masks_secrets_and_lists_every_problem(tmp_path, capsys):
    from streamer.cli import main

    good = tmp_path / "good.yaml"
    good.write_text(
        "kafka:\n  security_protocol: SASL_PLAINTEXT\n  sasl_mechanism: PLAIN\n"
        "  sasl_username: u\n  sasl_password: hunter2\n"
    )
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "sasl_password: '**********'" in out and "config hash" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka:\n  sasl_password: [hunter2]\nlearner:\n  lr: -1\n  bogus: 1\n")
    assert main(["check-config", str(bad)]) == 2
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert all(f in out for f in ("kafka.sasl_password", "learner.lr", "learner.bogus"))
    bad.write_text("learner: [unclosed\n")
    assert main(["check-config", str(bad)]) == 2


def _all_fields(model) -> list[tuple[str, object]]:
    out = []
    for name, info in model.model_fields.items():
        out.append((name, info))
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            out += [(f"{name}.{n}", i) for n, i in _all_fields(nested)]
    return out


def test_every_field_is_described_and_default_yaml_documents_them_all():
    from pathlib import Path

    from streamer.config.text import template

    for section, info in Settings.model_fields.items():
        for name, field in _all_fields(info.annotation):
            assert field.description, f"{section}.{name} has no description"
    default = Path(__file__).parent.parent / "configs" / "default.yaml"
    assert default.read_text() == template(), "regenerate configs/default.yaml from template()"
    assert load_settings(default) == Settings.model_validate({})


def test_shipped_example_configs_are_valid():
    from pathlib import Path

    for name in ("demo.yaml", "gpu.yaml", "default.yaml"):
        load_settings(Path(__file__).parent.parent / "configs" / name)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("records", "decode_workers", 0), ("records", "decode_workers", 65),
     ("replay", "store", "tensors"), ("learner", "compile", "sometimes")],
)  # fmt: skip
def test_feed_settings_are_checked_and_named(section, field, value):
    with pytest.raises(ValidationError, match=rf"{section}\.{field}"):
        Settings.model_validate({section: {field: value}})
    assert Settings().records.decode_workers is None  # None: from the CPUs the pod may use
