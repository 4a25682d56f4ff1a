"""Config validation: unknown keys and bad values are rejected with the field named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

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
