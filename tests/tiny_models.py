"""Tiny, seeded real models for tests: built from a config, saved to a folder, loaded back
through the same ``from_pretrained`` path users take. Random weights, real architectures."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path


def _clip_vocab() -> dict[str, int]:
    chars = list(string.ascii_lowercase + string.digits + "-,.'!?()/:")
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab


def make_tiny_clip(folder: Path, *, seed: int = 0, image_size: int = 32, dim: int = 16) -> Path:
    """A tiny CLIP (2 layers, width 32, projection ``dim``) with tokenizer and processor."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer(vocab=_clip_vocab(), merges=[], model_max_length=77)
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "vocab_size": vocab_size,
            "max_position_embeddings": 77,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=dim,
    )
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def clip_with_token_limit(tiny_clip_dir: Path, folder: Path) -> Path:
    """A copy of the tiny CLIP whose tokenizer records the 77-token limit real CLIP folders
    record (``make_tiny_clip`` leaves it unset; the task's long descriptions need truncation)."""
    shutil.copytree(tiny_clip_dir, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 77
    config_path.write_text(json.dumps(config))
    return folder
