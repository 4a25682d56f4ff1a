"""Exports a serving stack can load with open_clip alone, and verification against manifests."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from streamer.cli import main
from streamer.service.pipeline import build_engine
from streamer.state.checkpoint import Checkpoint
from streamer.state.export import CONFIG, MERGED, ExportError, export
from streamer.state.store import StoreError, VersionStore
from streamer.state.verify import NothingToVerify, VerifyError, verify

from .conftest import tiny_settings

TEXTS = ["a photo of a zero.", "a photo of a seven."]

# Run in a fresh interpreter, in the export folder, where `streamer` cannot be imported
# (isolated mode, and a finder that refuses it in case an editable install's path leaks in).
SERVER = textwrap.dedent("""
    import sys
    class NoStreamer:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "streamer":
                raise ImportError("streamer is not installed on this server")
    sys.meta_path.insert(0, NoStreamer())
    try:
        import streamer
        raise SystemExit("streamer is importable")
    except ImportError:
        pass
    import open_clip, torch
    net, _, preprocess = open_clip.create_model_and_transforms("local-dir:.")
    tokenizer = open_clip.get_tokenizer("local-dir:.")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save({"img": net.eval().encode_image(x),
                    "txt": net.encode_text(tokenizer(sys.argv[2:]))}, sys.argv[1])
""")


@pytest.fixture(scope="module")
def trained(digit_stream):
    """A tiny model one step in, and a checkpoint of it (as the daemon writes one)."""
    settings = tiny_settings()
    engine = build_engine(settings)
    engine.learner.step([engine.to_pair(s) for s in digit_stream[:16]])
    meta = {"id": "ckpt-00000001", "step": 1, "config": settings.model_dump(mode="json")}
    ckpt = Checkpoint(meta["id"], Path("ckpt-00000001"), meta, engine.model.trainable_state(), {})
    return engine, ckpt


@pytest.fixture
def exported(trained, tmp_path) -> Path:
    out = tmp_path / "export"
    export(trained[1], out, "merged")
    return out


def test_the_documented_recipe_loads_the_export_with_open_clip_alone(trained, exported, tmp_path):
    engine, _ = trained
    result = tmp_path / "served.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run([sys.executable, "-I", "-c", SERVER, str(result), *TEXTS],
                         cwd=exported, env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    served = torch.load(result, weights_only=True)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(F.normalize(served["img"], dim=-1), engine.model.encode_images(x),
                              atol=1e-5)  # fmt: skip
        assert torch.allclose(F.normalize(served["txt"], dim=-1), engine.model.encode_texts(TEXTS),
                              atol=1e-5)  # fmt: skip


def test_every_exported_file_is_readable_by_other_users(exported):
    for path in exported.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    config = json.loads((exported / CONFIG).read_text())
    assert {"model_cfg", "preprocess_cfg"} <= config.keys()  # what local-dir: and hf-hub: read


def test_an_export_refuses_a_folder_that_is_not_empty(trained, exported, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in exported.iterdir()}
    with pytest.raises(ExportError, match="not an empty folder"):
        export(trained[1], exported, "adapters")
    assert {p.name: p.stat().st_mtime_ns for p in exported.iterdir()} == before
    verify(exported)  # untouched, still whole


def test_verify_passes_a_whole_export_and_names_each_kind_of_mismatch(exported, tmp_path):
    assert verify(exported)["checkpoint"] == "ckpt-00000001"
    broken = tmp_path / "broken"
    cases = {
        "flipped bit": lambda d: _flip_a_bit(d / MERGED, "token_embedding.weight"),
        "missing": lambda d: (d / CONFIG).unlink(),
        "extra": lambda d: (d / "notes.txt").write_text("left over"),
    }
    expected = {"flipped bit": f"{MERGED}: sha256", "missing": f"{CONFIG}: listed in the "
                "manifest but missing", "extra": "notes.txt: present but not"}  # fmt: skip
    for case, damage in cases.items():
        subprocess.run(["rm", "-rf", str(broken)], check=True)
        subprocess.run(["cp", "-r", str(exported), str(broken)], check=True)
        damage(broken)
        with pytest.raises(VerifyError, match=expected[case]):
            verify(broken)


def _flip_a_bit(path: Path, tensor: str) -> None:
    """Flip the lowest bit of the first byte of one tensor's data, as a bad disk would."""
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    start = 8 + header_len + header[tensor]["data_offsets"][0]
    data[start] ^= 1
    path.write_bytes(bytes(data))


def test_streamer_verify_exits_non_zero_naming_the_file(exported, capsys):
    assert main(["verify", str(exported)]) == 0
    assert "files match" in capsys.readouterr().out
    _flip_a_bit(exported / MERGED, "token_embedding.weight")
    assert main(["verify", str(exported)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and MERGED in err and "Traceback" not in err
    assert main(["verify", str(exported / "nowhere")]) == 3  # nothing there to verify
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("where", ["dir", "memory"])
def test_a_published_version_verifies_by_its_path_and_by_the_stores_url(exported, tmp_path, where):
    url = str(tmp_path / "pub") if where == "dir" else f"memory://verify-{tmp_path.name}"
    store = VersionStore(url)
    version = store.publish(exported)
    assert verify(url)["checkpoint"] == "ckpt-00000001"  # the version latest.json names
    assert verify(f"{url}/versions/{version}") == store.verify(version) == store.verify()
    store.fs.pipe_file(f"{store.root}/versions/{version}/{MERGED}", b"not the weights")
    with pytest.raises(VerifyError, match=MERGED):
        verify(url)
    with pytest.raises(NothingToVerify):
        verify(f"{url}/versions/v999999")


def test_an_upload_that_does_not_verify_is_removed_and_never_pointed_at(
    exported, tmp_path, monkeypatch
):
    store = VersionStore(str(tmp_path / "pub"))
    put_file = store.fs.put_file

    def corrupting(src, dst, **kw):  # a store that garbles the weights on the way in
        put_file(src, dst, **kw)
        if dst.endswith(MERGED):
            _flip_a_bit(Path(dst), "token_embedding.weight")

    monkeypatch.setattr(store.fs, "put_file", corrupting)
    with pytest.raises(StoreError, match=f"does not verify: {MERGED}"):
        store.publish(exported)
    assert store.latest() is None and store.versions() == []
    monkeypatch.setattr(store.fs, "put_file", put_file)
    assert store.publish(exported) == "v000001"  # the number was never taken


def test_serving_code_can_verify_without_torch_or_open_clip(exported):
    code = ("import sys; from streamer.state.verify import verify; verify(sys.argv[1]); "
            "print(sorted({'torch', 'open_clip'} & set(sys.modules)))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, str(exported)], capture_output=True,
                         text=True, cwd=Path(__file__).parent.parent)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr[-2000:]
