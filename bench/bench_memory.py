"""Peak memory (RSS) of reading a large photo for CLIP and of bootstrapping 100k rows.

    .venv/bin/python bench/bench_memory.py            # writes bench/results/memory.json

Each case runs in a fresh Python process and its peak resident set is the kernel's figure for
that child (``ru_maxrss`` of ``RUSAGE_CHILDREN`` in a small parent that runs only it), so the
cases do not see each other's memory. Each
large case is shown beside a small baseline of the same kind measured in the same run:

- ``clip_agent_1mp`` / ``clip_agent_36mp``: ``ClipAgent.classify`` on one 1 MP and one 36 MP
  JPEG (a tiny seeded CLIP with the real 224-pixel preprocessing, so the figures are the
  image's, not the weights');
- ``clip_full_decode_36mp``: the 36 MP JPEG decoded at full size and embedded (the path before
  images were shrunk while decoded);
- ``bootstrap_1k`` / ``bootstrap_100k``: ``eval.bootstrap.bootstrap_intervals`` with 1000
  resamples over 1,000 and 100,000 rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

_CLIP_CASE = """
import sys
sys.path[:0] = [{root!r}]
from agents.clip_agent import ClipAgent
from agents.clip_model import load_clip
from core.images import ImageRef, open_image
from core.task import load_task
clip = load_clip({clip!r}, device="cpu")
ref = ImageRef.from_path({image!r})
if {full!r}:
    clip.embed_images([open_image(ref)])
else:
    (prediction,) = ClipAgent(clip).classify([ref], load_task("apple-leaf"))
    assert prediction.ok, prediction.error
"""

_BOOTSTRAP_CASE = """
import sys
sys.path[:0] = [{root!r}]
import numpy as np
from eval.bootstrap import bootstrap_intervals
rng = np.random.default_rng(0)
confidence = rng.uniform(0.3, 1.0, {rows})
correct = rng.uniform(size={rows}) < confidence
bootstrap_intervals(correct, confidence, correct, resamples=1000, seed=0)
"""


# Run in a small process of its own: a child forked straight from a large parent (this one, once
# it has built the CLIP) would count the parent's pages in its own peak.
_MEASURE = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-c", sys.argv[1]], stdout=subprocess.DEVNULL)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_bytes(code: str) -> int:
    """The peak resident set of ``python -c code`` run in a fresh process (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, code], capture_output=True, text=True, check=True
    )
    returncode, kib = (int(word) for word in done.stdout.split())
    if returncode != 0:
        raise RuntimeError(f"case failed ({returncode}): {done.stderr[-2000:]}")
    return kib * 1024  # Linux reports KiB


def write_photo(path: Path, width: int, height: int) -> Path:
    """A smooth seeded JPEG photo of ``width`` x ``height`` (a few MB even at 36 MP)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8))
    small.resize((width, height), Image.Resampling.BILINEAR).save(path, quality=90)
    return path


def measure(folder: Path) -> dict[str, Any]:
    sys.path[:0] = [str(ROOT / "tests")]
    from tiny_models import make_tiny_clip

    clip = make_tiny_clip(folder / "clip", image_size=224)
    photos = {
        "1mp": write_photo(folder / "1mp.jpg", 1224, 816),
        "36mp": write_photo(folder / "36mp.jpg", 7360, 4912),
    }
    cases = {
        "clip_agent_1mp": (photos["1mp"], False),
        "clip_agent_36mp": (photos["36mp"], False),
        "clip_full_decode_36mp": (photos["36mp"], True),
    }
    peaks: dict[str, int] = {}
    for name, (image, full) in cases.items():
        code = _CLIP_CASE.format(root=str(ROOT), clip=str(clip), image=str(image), full=full)
        peaks[name] = peak_rss_bytes(code)
    for name, rows in (("bootstrap_1k", 1_000), ("bootstrap_100k", 100_000)):
        peaks[name] = peak_rss_bytes(_BOOTSTRAP_CASE.format(root=str(ROOT), rows=rows))
    mib = {name: round(value / 2**20, 1) for name, value in peaks.items()}
    return {
        "peak_rss_mib": mib,
        "ratios": {
            "clip_36mp_over_1mp": round(peaks["clip_agent_36mp"] / peaks["clip_agent_1mp"], 2),
            "clip_full_decode_36mp_over_1mp": round(
                peaks["clip_full_decode_36mp"] / peaks["clip_agent_1mp"], 2
            ),
            "bootstrap_100k_over_1k": round(peaks["bootstrap_100k"] / peaks["bootstrap_1k"], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/memory.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(Path(tmp))
    for name, value in result["peak_rss_mib"].items():
        print(f"{name:24s} {value:8.1f} MiB")
    for name, value in result["ratios"].items():
        print(f"{name:32s} {value:6.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
