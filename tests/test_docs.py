"""The README is a front door and the docs name only what exists: every repository path,
`make` target and `streamer` verb they mention is there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamer.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A path in backticks is checked when it starts inside the repository's own tree; others
# (demo-out/, .cache/, /etc/streamer/..., pod paths) are outputs or live elsewhere.
TREE = {"streamer", "configs", "docs", "deploy", "benchmarks", "tests", "scripts"}
ROOT_FILES = {"Makefile", "Dockerfile", "pyproject.toml", "requirements.lock",
              "lock-constraints.txt", "README.md"}  # fmt: skip
TOKEN_END = ".,;:)"


def _code(text: str) -> list[str]:
    """The text of every fenced block and inline code span."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    return fenced + inline


def _paths(text: str) -> set[str]:
    found = set()
    for code in _code(text):
        lines = [line for line in code.splitlines() if "kubectl" not in line]  # kind/name
        for token in " ".join(lines).split():
            token = token.strip("'\"").rstrip(TOKEN_END).split("#")[0]
            head = token.split("/")[0]
            if any(c in token for c in "*<>{}…$=") or not token:
                continue
            if (head in TREE and "/" in token) or token in ROOT_FILES:
                found.add(token)
    return found


def _links(doc: Path) -> set[Path]:
    targets = re.findall(r"\]\(([^)\s]+)\)", doc.read_text())
    return {(doc.parent / t.split("#")[0]).resolve() for t in targets
            if not re.match(r"[a-z]+:", t) and not t.startswith("#")}  # fmt: skip


def _targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", makefile, flags=re.M))


def _verbs() -> set[str]:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    return set(commands.choices)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_link_make_target_and_verb_a_doc_names_exists(doc):
    text = doc.read_text()
    missing = sorted(p for p in _paths(text) if not (ROOT / p).exists())
    missing += sorted(str(p) for p in _links(doc) if not p.exists())
    code = "\n".join(_code(text))
    missing += sorted(f"make {t}" for t in re.findall(r"(?<![\w/-])make ([a-z][\w-]*)", code)
                      if t not in _targets())  # fmt: skip
    missing += sorted(f"streamer {v}" for v in re.findall(
        r"(?:^|[\s$(])streamer ([a-z][\w-]*)", code, flags=re.M) if v not in _verbs())  # fmt: skip
    assert missing == [], f"{doc.name} names what is not there"


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 10 * 1024
    head = text.splitlines()[:40]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)
    assert "configs/gpu.yaml" in text


def test_the_readme_minimal_config_is_the_shipped_one_and_valid():
    from streamer.config import load_settings
    from streamer.config.checks import missing_files

    text = (ROOT / "README.md").read_text()
    shown = re.search(r"```yaml\n(.*?)```", text, flags=re.S).group(1)
    path = ROOT / "configs" / "my-topic.yaml"
    assert path.read_text() == shown
    settings = load_settings(path)
    assert missing_files(settings) == []
    assert (settings.kafka.topic, settings.model.arch) == ("my-pairs", "ViT-B-32")
