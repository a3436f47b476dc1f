"""The local VLM agent on a tiny seeded LLaVA (CLIP vision tower + Qwen2 language model, the
``llava-interleave-qwen`` layout) built from its config, saved, and loaded back through
``AutoProcessor`` / ``AutoModelForImageTextToText``.

Qwen2-VL / Qwen2.5-VL are not used here: in transformers 5.24 their processors need a video
processor, which needs torchvision, which this environment does not install.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agents.errors import ModelLoadError
from agents.hf_vlm import ANSWER_PREFIX, LABEL_SUFFIX, HFVLMAgent, load_vlm
from agents.registry import build_agent
from agents.types import Neighbour, Prediction
from core.images import ImageRef
from core.task import Task
from rag.evidence import Evidence

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_llava(folder: Path, *, seed: int = 0) -> Path:
    """A tiny LLaVA (2+2 layers, width 32) with a byte-level Qwen2 tokenizer, built offline."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Tokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<image>"]})
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    torch.manual_seed(seed)
    config = LlavaConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llava(tmp_path_factory.mktemp("tiny-llava") / "llava")


@pytest.fixture(scope="module")
def agent(llava_dir: Path) -> HFVLMAgent:
    return HFVLMAgent(load_vlm(str(llava_dir), device="cpu"), name="llava")


@pytest.fixture
def leaf(tmp_path: Path) -> ImageRef:
    path = tmp_path / "leaf.jpg"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(path)
    return ImageRef.from_path(path)


def reference_logprob(agent: HFVLMAgent, image: Image.Image, context: str, label: str) -> float:
    """log P(label" | image, context) from one unbatched, unpadded forward pass."""
    import torch

    vlm = agent.vlm
    inputs = vlm.processor(text=[context], images=[image], return_tensors="pt")
    cont = vlm.tokenizer(label + LABEL_SUFFIX, add_special_tokens=False)["input_ids"]
    ids = torch.cat([inputs["input_ids"], torch.tensor([cont])], dim=1)
    with torch.inference_mode():
        logits = vlm.model(input_ids=ids, pixel_values=inputs["pixel_values"]).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    start = inputs["input_ids"].shape[1]
    return float(sum(logp[start + i - 1, t] for i, t in enumerate(cont)))


def test_scores_are_the_normalised_label_logprobs(agent: HFVLMAgent, leaf, apple_task: Task):
    pred = asyncio.run(agent.predict(leaf, apple_task))
    assert pred.ok and pred.agent == "llava" and pred.error is None
    assert list(pred.scores) == list(apple_task.labels)
    assert sum(pred.scores.values()) == pytest.approx(1.0)
    assert pred.label == max(pred.scores, key=pred.scores.__getitem__)
    assert pred.confidence == pytest.approx(pred.scores[pred.label])

    from core.images import open_image

    image = open_image(leaf)
    context = agent.prompt(apple_task)
    assert context.endswith("<|im_start|>assistant\n" + ANSWER_PREFIX)
    assert "<image>" in context and "black-rot, healthy, rust, scab" in context
    reference = np.array([reference_logprob(agent, image, context, lb) for lb in apple_task.labels])
    expected = np.exp(reference - reference.max())
    expected /= expected.sum()
    got = np.array([pred.scores[label] for label in apple_task.labels])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_length_normalisation_uses_the_mean_token_logprob(
    agent: HFVLMAgent, leaf, apple_task: Task
) -> None:
    from core.images import open_image

    image = open_image(leaf)
    context = agent.prompt(apple_task)
    summed = agent.label_logprobs(image, context, apple_task.labels)
    mean_agent = HFVLMAgent(agent.vlm, length_normalise=True)
    mean = mean_agent.label_logprobs(image, context, apple_task.labels)
    lengths = [len(label + LABEL_SUFFIX) for label in apple_task.labels]  # byte-level: 1 per char
    np.testing.assert_allclose(mean, summed / np.array(lengths), rtol=1e-5)


def test_reevaluation_prompt_carries_previous_answer_and_evidence(
    agent: HFVLMAgent, leaf, apple_task: Task
) -> None:
    evidence = Evidence(
        neighbours=(Neighbour(id="n1", label="scab", similarity=0.93),), vote={"scab": 1.0}
    )
    previous = Prediction(agent="llava", label="rust", confidence=0.6)
    context = agent.prompt(apple_task, round=1, previous=previous, evidence=evidence)
    assert 'previous answer was "rust"' in context and "1. scab (similarity 0.930)" in context
    first = asyncio.run(agent.predict(leaf, apple_task))
    again = asyncio.run(
        agent.predict(leaf, apple_task, round=1, previous=previous, evidence=evidence)
    )
    assert again.round == 1 and again.ok
    assert again.scores != first.scores


def test_spec_builds_the_agent_with_a_generated_reason(llava_dir: Path, leaf, apple_task: Task):
    built = build_agent(f"vlm=hf-vlm:{llava_dir}", task=apple_task, device="cpu", reason_tokens=6)
    assert isinstance(built, HFVLMAgent) and built.name == "vlm" and built.can_reevaluate
    pred = asyncio.run(built.predict(leaf, apple_task))
    # byte-level tokens: six generated tokens decode to at most six characters
    assert pred.ok and 0 < len(pred.reason) <= 6
    assert HFVLMAgent(built.vlm).classify(leaf, apple_task).reason == ""


def test_bad_image_is_a_failed_prediction(agent: HFVLMAgent, tmp_path: Path, apple_task: Task):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    pred = asyncio.run(agent.predict(ImageRef.from_path(bad), apple_task))
    assert pred.label is None and "not an image file" in pred.error and str(bad) in pred.error


def test_unloadable_folder_is_a_one_line_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_vlm(str(tmp_path / "missing-model"), device="cpu")
    message = str(info.value)
    assert "\n" not in message and "missing-model" in message and "hf-vlm:DIR" in message


def test_hub_id_offline_fails_at_once_without_hub_retries(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        load_vlm("no-such-org/no-such-vlm", device="cpu")
    message = str(info.value)
    assert "not a local folder, not in the Hugging Face cache, and HF_HUB_OFFLINE is set" in message
    assert "--agent hf-vlm:DIR" in message and "TRUSTORCH_HF_VLM=DIR" in message
    assert "\n" not in message


def test_hub_id_with_unreachable_hub_fails_without_retrying(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelLoadError, match=r"http://127\.0\.0\.1:9 cannot be reached"):
        load_vlm("no-such-org/no-such-vlm", device="cpu")
