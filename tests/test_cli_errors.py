"""Every verb on a user's mistake: one line on stderr naming the problem and the fix, the
documented exit code (`streamer --help`), never a traceback. Each case is its own process, as
a user would meet it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.cli.common import MISSING, USAGE

ROOT = Path(__file__).resolve().parents[1]
BAD_CONFIGS = {  # the config file's text, and the exit code
    "bad YAML": ("learner: [unclosed\n", USAGE),
    "wrong type": ("learner:\n  lr: lots\n", USAGE),
    "unknown key": ("learner:\n  lrr: 0.1\n", USAGE),
    "not a mapping": ("- just\n- a list\n", USAGE),
}
CONFIG_VERBS = {  # the arguments each verb needs besides --config ({d}: a scratch directory)
    "run": [], "check-config": [], "simulate": [], "produce": [],
    "demo": ["--out", "{d}/out"], "pretrain": ["--out", "{d}/out"],
    "export": ["--out", "{d}/out"], "rollback": ["--to", "ckpt-00000001"],
    "explain": ["{d}"],
}  # fmt: skip


def _streamer(tmp_path: Path, *args: str, **environ: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(environ, PYTHONPATH=str(ROOT))
    argv = [a.format(d=tmp_path) for a in args]
    return subprocess.run([sys.executable, "-m", "streamer", *argv], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip


def _assert_one_line(done: subprocess.CompletedProcess, code: int) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.returncode == code, done.stderr


@pytest.mark.parametrize("verb", sorted(CONFIG_VERBS))
def test_every_verb_names_a_config_file_that_is_not_there_and_exits_3(tmp_path, verb):
    done = _streamer(tmp_path, verb, *CONFIG_VERBS[verb], "--config", "{d}/nope.yaml")
    _assert_one_line(done, MISSING)
    assert "nope.yaml" in done.stderr


@pytest.mark.parametrize(
    ("verb", "mistake"),  # each verb one mistake, each mistake several verbs
    [(v, sorted(BAD_CONFIGS)[n % len(BAD_CONFIGS)]) for n, v in enumerate(sorted(CONFIG_VERBS))],
)
def test_every_verb_refuses_a_bad_config_in_one_line_with_exit_2(tmp_path, verb, mistake):
    text, code = BAD_CONFIGS[mistake]
    (tmp_path / "c.yaml").write_text(text)
    _assert_one_line(_streamer(tmp_path, verb, *CONFIG_VERBS[verb], "--config", "{d}/c.yaml"), code)


@pytest.mark.parametrize("mistake", sorted(BAD_CONFIGS))
def test_check_config_refuses_each_kind_of_bad_config_with_exit_2(tmp_path, mistake):
    text, code = BAD_CONFIGS[mistake]
    (tmp_path / "c.yaml").write_text(text)
    _assert_one_line(_streamer(tmp_path, "check-config", "c.yaml"), code)


def test_an_unknown_key_is_answered_with_the_nearest_known_one(tmp_path):
    (tmp_path / "c.yaml").write_text("learner:\n  lrr: 0.1\n")
    done = _streamer(tmp_path, "run", "--config", "c.yaml")
    assert "learner.lrr: unknown key (did you mean 'lr'?)" in done.stderr


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["explain", "/nonexistent/ckpt"], MISSING),
        (["explain", "{d}"], MISSING),  # a directory without checkpoints
        (["export", "--checkpoint-dir", "/nonexistent", "--out", "{d}/out"], MISSING),
        (["export", "--checkpoint-dir", "{d}", "--out", "{d}/out"], MISSING),
        (["export", "--checkpoint-dir", "{d}", "--checkpoint", "ckpt-99", "--out", "o"], MISSING),
        (["export", "--out", "{d}/out"], USAGE),  # neither --checkpoint-dir nor --config
        (["export", "--checkpoint-dir", "{d}", "--blend", "2", "--out", "o"], USAGE),
        (["rollback", "--checkpoint-dir", "/nonexistent", "--to", "ckpt-1"], MISSING),
        (["rollback", "--checkpoint-dir", "{d}", "--to", "ckpt-99"], MISSING),
        (["check-config"], USAGE),  # no file and no STREAMER_CONFIG
        (["run", "--config", "/nonexistent/dir/c.yaml"], MISSING),
        (["broker", "--port", "many"], USAGE),
        (["simulate", "--set", "learner.lr"], USAGE),
        (["no-such-verb"], USAGE),
    ],
)
def test_a_missing_checkpoint_directory_or_argument_is_one_line(tmp_path, args, code):
    _assert_one_line(_streamer(tmp_path, *args), code)


def test_check_config_lists_missing_files_and_misspelt_environment(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "model: {pretrained: /nonexistent/base.safetensors}\n"
        "evaluation: {reference_manifest: refs.jsonl}\nrecords: {image_root: /nonexistent}\n"
    )
    done = _streamer(tmp_path, "check-config", "c.yaml", STREAMER_LERNER__LR="0.1")
    _assert_one_line(done, USAGE)
    assert "model.pretrained: file '/nonexistent/base.safetensors' is not there" in done.stdout
    assert "evaluation.reference_manifest: file 'refs.jsonl' is not there" in done.stdout
    assert "records.image_root: directory '/nonexistent' is not there" in done.stdout
    assert "STREAMER_LERNER__LR" in done.stdout and "'STREAMER_LEARNER__LR'" in done.stdout


def test_a_model_file_that_is_not_there_stops_run_in_one_line_with_exit_3(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {pretrained: /nonexistent/base.safetensors}\n")
    done = _streamer(tmp_path, "run", "--config", "c.yaml")
    _assert_one_line(done, MISSING)
    assert "/nonexistent/base.safetensors" in done.stderr


def test_an_internal_error_is_one_line_and_its_traceback_with_debug(tmp_path):
    (tmp_path / "ckpt-00000001").mkdir()
    (tmp_path / "ckpt-00000001" / "meta.json").write_text("{}")  # garbled: no id, no files
    done = _streamer(tmp_path, "explain", "{d}/ckpt-00000001")
    _assert_one_line(done, MISSING)  # CheckpointError: the user's to fix
    assert "Traceback" in _streamer(tmp_path, "--debug", "explain", "{d}/ckpt-00000001").stderr
