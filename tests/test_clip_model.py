from __future__ import annotations

import pytest

from agents.clip_model import load_clip
from agents.errors import ModelLoadError


def test_local_folder_loads_under_its_resolved_path(tiny_clip_dir, monkeypatch):
    monkeypatch.chdir(tiny_clip_dir.parent)
    clip = load_clip(tiny_clip_dir.name)
    assert clip.name == str(tiny_clip_dir.resolve())
    assert clip.embed_texts(["x" * 500]).shape == (1, clip.dim)  # truncated at the context


def test_offline_hub_fails_at_once_with_the_way_out(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as e:
        load_clip("no-such-org/no-such-clip")
    message = str(e.value)
    assert "not a local folder, not in the Hugging Face cache, and HF_HUB_OFFLINE is set" in message
    assert "--clip-model DIR" in message and "\n" not in message


def test_unreachable_hub_fails_without_retrying(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelLoadError, match=r"http://127\.0\.0\.1:9 cannot be reached"):
        load_clip("no-such-org/no-such-clip")


def test_a_broken_local_folder_is_named_as_such_without_a_hub_check(tmp_path, monkeypatch):
    from agents import hub

    def no_hub_check(*args, **kwargs):
        raise AssertionError("a local folder must not lead to a hub check")

    monkeypatch.setattr(hub, "unreachable_hub", no_hub_check)
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError) as e:
        load_clip(str(folder))
    message = str(e.value)
    assert message.startswith(f"could not load CLIP weights from '{folder.resolve()}'")
    assert "not a local folder" not in message and "--clip-model DIR" in message
    assert "\n" not in message
