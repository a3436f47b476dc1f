"""``trustorch demo``: diagnose leaf photos with every agent this machine can run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from core.cli import JsonOption, emit_json, print_table, progress_bar, stderr_console
from core.errors import InputError

app = typer.Typer(
    help="Demos: one command from a photo to a diagnosis with its whole trace.",
    no_args_is_help=True,
)

DEFAULT_OUT_DIR = Path("trustorch-reports")


@app.command("leaf")
def leaf(
    images: Annotated[
        list[Path] | None,
        typer.Argument(help="Leaf photos, folders (DIR/<label>/* gives the true label) or CSVs."),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the HTML reports are written.")
    ] = DEFAULT_OUT_DIR,
    trust: Annotated[
        Path | None, typer.Option("--trust", help="Trust profiles JSON (`trustorch eval trust`).")
    ] = None,
    index_dir: Annotated[
        Path | None,
        typer.Option("--index-dir", help="Chroma index folder (default: $TRUSTORCH_INDEX_DIR)."),
    ] = None,
    clip_model: Annotated[
        str | None,
        typer.Option(
            "--clip-model", help="CLIP weights folder or cached hub id ($TRUSTORCH_CLIP_MODEL)."
        ),
    ] = None,
    max_rounds: Annotated[int, typer.Option("--max-rounds", min=1)] = 2,
    serve: Annotated[bool, typer.Option("--serve", help="Start the web page instead.")] = False,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port of the web page.")
    ] = 7860,
    json_out: JsonOption = False,
) -> None:
    """Diagnose apple-leaf photos and write one self-contained HTML report per image.

    Runs every agent this machine can: CLIP (local weights), a VLM (OPENAI_API_KEY,
    OPENAI_BASE_URL or TRUSTORCH_HF_VLM), retrieval (an index); says which were skipped.

    Examples:

      trustorch demo leaf leaf.jpg --clip-model ~/models/clip-vit-base-patch32

      trustorch demo leaf photos/ --trust trust.json --index-dir ~/idx --out-dir reports --json

      trustorch demo leaf --serve --port 7860 --clip-model ~/models/clip-vit-base-patch32
    """
    from core.files import check_output_folder, output_folder
    from core.task import load_task
    from orchestrator.demo.pipeline import build_pipeline

    if not serve and not images:
        raise InputError("give at least one image (or --serve for the web page)")
    if not serve:
        check_output_folder(out_dir, what="the reports")
    if serve:
        from orchestrator.demo.web import check_port

        check_port(host, port)
    task = load_task("apple-leaf")
    console = stderr_console()
    with console.status("finding the agents this machine can run"):
        pipeline = build_pipeline(
            task=task,
            clip_model=clip_model,
            index_dir=index_dir,
            trust_file=trust,
            max_rounds=max_rounds,
        )
    for status in pipeline.availability.statuses:
        console.print(status.line(), highlight=False, markup=False)
    if serve:
        from orchestrator.demo.web import serve as serve_web

        serve_web(pipeline, host=host, port=port)
        return
    output_folder(out_dir, what="the reports")
    results = asyncio.run(_diagnose_all(pipeline, images or [], out_dir, quiet=json_out))
    if json_out:
        emit_json(
            {
                "agents": [
                    {"name": s.name, "available": s.available, "detail": s.detail}
                    for s in pipeline.availability.statuses
                ],
                "results": results,
            }
        )
        return
    print_table(
        f"Diagnoses (reports in {out_dir})",
        ["image", "diagnosis", "confidence", "prediction set", "truth", "report"],
        [
            (
                Path(r["image"]).name,
                r["label"] or "abstain",
                r["confidence"],
                ", ".join(r["prediction_set"]),
                r["truth"],
                Path(r["report"]).name,
            )
            for r in results
        ],
    )


async def _diagnose_all(
    pipeline: Any, paths: list[Path], out_dir: Path, *, quiet: bool
) -> list[dict[str, Any]]:
    from orchestrator.demo.report import write_report
    from orchestrator.inputs import collect_images

    collected = collect_images(paths, task=pipeline.task)
    console = stderr_console()
    for skipped in collected.skipped:
        console.print(f"skipped {skipped.source}: {skipped.reason}", highlight=False, markup=False)
    results: list[dict[str, Any]] = []
    with progress_bar(disable=quiet) as bar:
        job = bar.add_task("diagnosing", total=len(collected.images))
        for item in collected.images:
            decision = await pipeline.diagnose(item.image, truth=item.truth)
            html_text = pipeline.report(decision, Path(item.image.source).read_bytes())
            name = f"{Path(item.image.source).stem}-{item.image.sha256[:8]}.html"
            path = write_report(html_text, out_dir / name)
            results.append(
                {
                    "image": item.image.source,
                    "sha256": item.image.sha256,
                    "label": decision.label,
                    "confidence": decision.confidence,
                    "prediction_set": list(decision.prediction_set),
                    "truth": decision.truth,
                    "rounds_used": decision.rounds_used,
                    "report": str(path),
                }
            )
            bar.advance(job)
    return results
