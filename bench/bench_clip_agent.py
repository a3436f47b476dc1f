"""CLIP agent throughput (images/s): batched vs one at a time, and its overhead over the bare
model forward pass, on the real ViT-B/32 architecture with random weights (no download:
``CLIPConfig()`` defaults are ViT-B/32; the processor is built offline with the real
preprocessing settings). Random weights run at the real speed.

    .venv/bin/python bench/bench_clip_agent.py                 # CPU (and CUDA when present)
    .venv/bin/python bench/bench_clip_agent.py --n 64 --batch-size 32 --devices cuda

Measured per device: the best (and the median) of ``--repeats`` timed runs after one warm-up;
the four run in a shuffled order in every round, so other load on the machine hits all alike.
Ratios use the best times (as ``timeit`` advises: the others measure the machine's noise), in
wall time and in process CPU time (all threads), which other processes on a busy machine
disturb far less.
- ``bare_forward``: ``get_image_features`` on already preprocessed pixel tensors (baseline);
- ``embed_decoded``: ``ClipModel.embed_images`` on decoded PIL images (adds preprocessing);
- ``agent_batched``: ``ClipAgent.predict_many`` on image files (adds reading, decoding, safety
  checks, the softmax over labels and the Prediction objects);
- ``agent_one_at_a_time``: ``ClipAgent.predict`` per file, awaited one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.clip_agent import ClipAgent  # noqa: E402
from agents.clip_model import ClipModel  # noqa: E402
from agents.types import ImageRef  # noqa: E402
from core.task import load_task  # noqa: E402


def offline_vit_b32(device: str) -> ClipModel:
    """ViT-B/32 (CLIPConfig defaults) with seeded random weights and an offline processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + "-,.'!?()/:")
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab.setdefault(c + suffix, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    torch.manual_seed(0)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    model = CLIPModel(CLIPConfig()).to(device=device, dtype=dtype).eval()
    return ClipModel(
        name="random-vit-b32", model=model, processor=processor, device=device, dtype=dtype
    )


def write_images(folder: Path, n: int, size: int) -> list[ImageRef]:
    from PIL import Image

    rng = np.random.default_rng(0)
    refs = []
    for i in range(n):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        path = folder / f"leaf{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        refs.append(ImageRef.from_path(path))
    return refs


def timed_round_robin(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None], seed: int = 0
) -> dict[str, dict[str, float]]:
    """Wall and process-CPU seconds of each function (best and median of ``repeats``): one
    warm-up each, then in every round all functions run once in a shuffled order."""
    for fn in fns.values():
        fn()
        sync()
    rng = random.Random(seed)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            sync()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "best": min(wall[name]),
            "median": statistics.median(wall[name]),
            "cpu_best": min(cpu[name]),
        }
        for name in fns
    }


def ratios(seconds: dict[str, float]) -> dict[str, float]:
    return {
        "batched_speedup_over_one_at_a_time": seconds["agent_one_at_a_time"]
        / seconds["agent_batched"],
        "agent_batched_over_bare_forward": seconds["agent_batched"] / seconds["bare_forward"],
        "agent_one_at_a_time_over_bare_forward": seconds["agent_one_at_a_time"]
        / seconds["bare_forward"],
        "embed_decoded_over_bare_forward": seconds["embed_decoded"] / seconds["bare_forward"],
    }


def bench_device(device: str, n: int, batch_size: int, repeats: int, size: int) -> dict:
    import torch
    from PIL import Image

    from agents.clip_model import _features

    clip = offline_vit_b32(device)
    task = load_task("apple-leaf")
    agent = ClipAgent(clip, batch_size=batch_size)
    agent.text_embeddings(task)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        refs = write_images(Path(tmp), n, size)
        decoded = [Image.open(r.source).convert("RGB") for r in refs]
        pixels = clip.processor(images=decoded, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(device, dtype=clip.dtype)

        def bare() -> None:
            with torch.inference_mode():
                for start in range(0, n, batch_size):
                    _features(
                        clip.model.get_image_features(
                            pixel_values=pixels[start : start + batch_size]
                        )
                    )

        def embed() -> None:
            clip.embed_images(decoded, batch_size=batch_size)

        def batched() -> None:
            preds = asyncio.run(agent.predict_many(refs, task))
            assert all(p.ok for p in preds)

        async def one_by_one() -> None:
            for ref in refs:
                assert (await agent.predict(ref, task)).ok

        timings = timed_round_robin(
            {
                "bare_forward": bare,
                "embed_decoded": embed,
                "agent_batched": batched,
                "agent_one_at_a_time": lambda: asyncio.run(one_by_one()),
            },
            repeats,
            sync,
        )
    seconds = {name: t["best"] for name, t in timings.items()}
    cpu_seconds = {name: t["cpu_best"] for name, t in timings.items()}
    return {
        "device": device,
        "dtype": str(clip.dtype).removeprefix("torch."),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "seconds": seconds,
        "median_seconds": {name: t["median"] for name, t in timings.items()},
        "cpu_seconds": cpu_seconds,
        "images_per_s": {k: n / v for k, v in seconds.items()},
        "ratios": ratios(seconds),
        "cpu_time_ratios": ratios(cpu_seconds),
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=32, help="images per timed run (default 32)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--image-size", type=int, default=256, help="side of the test JPEGs")
    parser.add_argument("--devices", default="auto", help="cpu, cuda, cpu,cuda (auto: both if any)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/clip_agent.json")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    results = {}
    for device in devices:
        print(f"[{device}] ViT-B/32, n={args.n}, batch={args.batch_size} ...", flush=True)
        result = bench_device(device, args.n, args.batch_size, args.repeats, args.image_size)
        results[device] = result
        for name, rate in result["images_per_s"].items():
            wall, cpu = result["seconds"][name], result["cpu_seconds"][name]
            print(
                f"  {name:<20} {rate:7.1f} images/s  (wall {wall:.3f} s, process CPU {cpu:.3f} s)"
            )
        print(f"  {'ratio':<38} {'wall':>6} {'CPU':>6}")
        for name, ratio in result["ratios"].items():
            print(f"  {name:<38} {ratio:5.2f}x {result['cpu_time_ratios'][name]:5.2f}x")
    report = {
        "benchmark": "clip_agent",
        "model": "ViT-B/32 architecture (CLIPConfig defaults), random weights",
        "n_images": args.n,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "image_size": args.image_size,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
