"""A missing optional package is one line naming the extra that installs it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from core.extras import MissingExtraError, missing_extra_error, missing_package
from orchestrator.cli import main


def qwen_vl_folder(root: Path) -> Path:
    """The two files that make transformers build Qwen2.5-VL's processor, whose video part
    needs torchvision."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (root / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "Qwen2_5_VLProcessor",
                "image_processor_type": "Qwen2VLImageProcessor",
            }
        )
    )
    return root


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here"
)
def test_qwen_vl_without_torchvision_names_the_qwen_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    leaf = tmp_path / "leaf.png"
    Image.new("RGB", (8, 8), (20, 120, 30)).save(leaf)
    folder = qwen_vl_folder(tmp_path / "qwen")
    code = main(["agents", "predict", str(leaf), "--agent", f"hf-vlm:{folder}"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "needs torchvision" in err and "pip install 'trust-orchestrator[qwen]'" in err
    assert str(folder) in err


def test_missing_module_names_its_extra() -> None:
    error = ModuleNotFoundError("No module named 'llama_cpp'", name="llama_cpp")
    assert missing_package(error) == "llama_cpp"
    message = str(missing_extra_error(error, needed_by="the llm policy"))
    assert message == (
        "the llm policy needs llama_cpp, which is not installed: "
        "pip install 'trust-orchestrator[llm]' (or: pip install llama-cpp-python)"
    )


def test_package_without_an_extra_and_unnamed_import_errors() -> None:
    plain = missing_extra_error(ModuleNotFoundError("x", name="foo.bar"), needed_by="X")
    assert isinstance(plain, MissingExtraError) and str(plain).endswith("pip install foo")
    vague = missing_extra_error(ImportError("cannot load libfoo.so\nmore"), needed_by="X")
    assert str(vague) == "X needs a package that is not installed (cannot load libfoo.so)"


def test_loading_a_model_prints_no_progress_bar_or_notice(tiny_clip_dir: Path, capfd) -> None:
    from transformers.utils import logging as hf_logging

    from agents.clip_model import load_clip

    before = (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity())
    capfd.readouterr()
    load_clip(str(tiny_clip_dir), device="cpu")
    out, err = capfd.readouterr()
    assert "Loading weights" not in err + out and "[transformers]" not in err + out
    assert (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()) == before
