"""What a valid config can still get wrong, found before start-up: files it names that are
not there, and STREAMER_* environment variables that name no field (pydantic-settings ignores
those silently). Also relative paths anchored to a directory, so a config recorded in a
checkpoint means the same files wherever it is read."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from streamer.config import Settings
from streamer.config.text import did_you_mean

ENV_PREFIX = "STREAMER_"
# Variables with the prefix that are not config fields.
NOT_FIELDS = {
    "STREAMER_CONFIG": "the config file the verbs read when --config is not given",
    "STREAMER_TEST_ARTIFACTS": "where the test suite keeps what a failed test leaves",
}


def missing_files(settings: Settings) -> list[str]:
    """One line per referenced file or directory that is not there: the field, the value."""
    model, learner = settings.model, settings.learner
    wanted: list[tuple[str, Path | None, bool]] = [  # (field, path, must be a directory)
        ("model.pretrained", model.weights_file, False),
        ("evaluation.reference_manifest", settings.evaluation.reference_manifest, False),
        ("records.image_root", settings.records.image_root, True),
        ("learner.regularizer.manifest", learner.regularizer.manifest, False),
        ("learner.rehearse.manifest", learner.rehearse.manifest, False),
        *((f"model.config_dirs[{n}]", d, True) for n, d in enumerate(model.config_dirs)),
    ]
    problems = []
    for field, path, directory in wanted:
        if path is None or (path.is_dir() if directory else path.is_file()):
            continue
        kind = "directory" if directory else "file"
        why = "is not there" if not path.exists() else f"is not a {kind}"
        problems.append(f"{field}: {kind} {str(path)!r} {why}")
    return problems


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """One line per STREAMER_SECTION__FIELD variable that names no field, with the nearest."""
    problems = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in NOT_FIELDS:
            continue
        path = name.removeprefix(ENV_PREFIX).lower().split("__")
        model: Any = Settings
        for depth, part in enumerate(path):
            fields = model.model_fields if _is_model(model) else {}
            if part not in fields:
                known = [
                    ENV_PREFIX + "__".join([*path[:depth], k, *path[depth + 1 :]]).upper()
                    for k in fields
                ]
                problems.append(
                    f"environment {name}: names no config field{did_you_mean(name, known)}"
                )
                break
            model = fields[part].annotation
    return problems


def anchored(settings: Settings, base: Path) -> Settings:
    """The same settings with every relative path (and a relative weights file in
    model.pretrained) made absolute against `base`."""
    updates = {name: _anchor(getattr(settings, name), base) for name in Settings.model_fields}
    model = updates["model"]
    if model.weights_file is not None and not model.weights_file.is_absolute():
        weights = str(base / model.weights_file)
        updates["model"] = model.model_copy(update={"pretrained": weights})
    return settings.model_copy(update=updates)


def _anchor(section: BaseModel, base: Path) -> BaseModel:
    update = dict(_anchored_fields(section, base))
    return section.model_copy(update=update) if update else section


def _anchored_fields(section: BaseModel, base: Path) -> Iterator[tuple[str, Any]]:
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Path) and not value.is_absolute():
            yield name, base / value
        elif isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
            yield name, tuple(v if v.is_absolute() else base / v for v in value)
        elif isinstance(value, BaseModel):
            anchored_section = _anchor(value, base)
            if anchored_section is not value:
                yield name, anchored_section


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
