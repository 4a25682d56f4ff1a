"""Shared fixtures: the tiny model, real digit images, and small engines built from config."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog
import torch

from streamer.config import Settings, StreamConfig
from streamer.dev import datasets
from streamer.records import Sample
from streamer.service.pipeline import Engine, build_engine

torch.set_num_threads(2)  # the CI machine's size; also keeps CPU results reproducible


def tiny_settings(**sections: dict[str, Any]) -> Settings:
    """Tiny model, small batches; keyword arguments override whole config sections' fields."""
    base: dict[str, dict[str, Any]] = {
        "model": {"arch": "streamer-tiny"},
        "learner": {"batch_size": 16, "replay_per_step": 8, "steps_per_batch": 2},
        "replay": {"capacity": 200},
        "evaluation": {"probe_fraction": 0.1, "eval_every": 64, "probe_per_window": 32},
    }
    for name, fields in sections.items():
        base.setdefault(name, {}).update(fields)
    return Settings.model_validate(base)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Tests that configure logging must not leave their handlers to the next test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def digit_stream() -> list[Sample]:
    """All 1,797 scikit-learn digits as PNG records, two class-incremental tasks."""
    return list(datasets.stream(StreamConfig(dataset="digits", tasks=2, seed=0)))


@pytest.fixture
def engine() -> Engine:
    return build_engine(tiny_settings())
