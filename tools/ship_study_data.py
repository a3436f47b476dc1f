"""Rebuild the figures-only copy of the reference study's recorded outputs in ``prompts/study``.

The full copy, with the models' free-text reasons, is ``../shared/data/paper/`` (or the folder
given as the first argument). The shipped copy keeps every id, image name, label, prediction,
confidence, retrieval score and flag, and the training embeddings; it drops the ``*_reason``
columns. ``PROVENANCE.json`` records the sha256 of every source and shipped file.

    python tools/ship_study_data.py [../shared/data/paper]
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

UPSTREAM = "https://github.com/Applied-AI-Research-Lab/Orchestrator-Agent-Trust"
UPSTREAM_COMMIT = "0a4e99c70415bf0839af397d8645772c13dac84e"
FILES = {
    "case1_zero_shot.csv": "Results/Case1/test_set_zero_shot_classification.csv",
    "case3_trust_rag.csv": "Results/Case3/predictions.csv",
    "train_clip_vitb32_embeddings.npz": "vector_db/plant_disease_vectordb.faiss and .pkl",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def without_reasons(source: Path, target: Path) -> None:
    with source.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    keep = [i for i, name in enumerate(rows[0]) if not name.endswith("_reason")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow([row[i] for i in keep])
    target.write_text(out.getvalue(), encoding="utf-8")


def main() -> None:
    source_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/paper")
    target_dir = Path(__file__).resolve().parent.parent / "prompts" / "study"
    target_dir.mkdir(exist_ok=True)
    entries = []
    for name, upstream_path in FILES.items():
        source, target = source_dir / name, target_dir / name
        if name.endswith(".csv"):
            without_reasons(source, target)
        else:
            shutil.copyfile(source, target)
        entries.append(
            {
                "file": name,
                "upstream_path": upstream_path,
                "source_sha256": sha256(source),
                "sha256": sha256(target),
                "bytes": target.stat().st_size,
                "reasons_removed": name.endswith(".csv"),
            }
        )
    provenance = {
        "upstream_repository": UPSTREAM,
        "upstream_commit": UPSTREAM_COMMIT,
        "paper": "arXiv 2507.10571",
        "licence": "MIT (see NOTICE)",
        "derivation": (
            "upstream columns renamed and reordered into the project's wide format (see README.md);"
            " the embeddings are the upstream index's vectors with their labels and file names;"
            " the shipped CSVs drop every *_reason column"
        ),
        "files": entries,
    }
    (target_dir / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {len(entries)} files to {target_dir}")


if __name__ == "__main__":
    main()
