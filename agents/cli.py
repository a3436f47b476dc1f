"""``trustorch agents``: run vision agents on images from the command line."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from agents.registry import BuildContext, default_registry
from core.cli import JsonOption, TaskOption, device_name, emit_json, print_table, progress_bar
from core.errors import InputError

app = typer.Typer(
    help="Vision agents: CLIP zero-shot, OpenAI-compatible VLMs, local VLMs.", no_args_is_help=True
)

ImagesArg = Annotated[
    list[str], typer.Argument(help="Image files or http(s) URLs.", show_default=False)
]
AgentOpt = Annotated[
    list[str],
    typer.Option(
        "--agent",
        "-a",
        help=f"Agent spec, repeatable: {default_registry().syntaxes()}; prefix name= to name it "
        "(gpt=openai:gpt-4o).",
    ),
]
ClipModelOpt = Annotated[
    str | None,
    typer.Option(
        "--clip-model",
        help="CLIP hub id or folder for `clip` (default: $TRUSTORCH_CLIP_MODEL or "
        "openai/clip-vit-base-patch32).",
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="cpu, cuda, cuda:1 (default: auto).", callback=device_name),
]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--agent-option",
        "--option",
        help="key=value for every agent whose kind takes key (timeout_s=30, max_concurrency=8, "
        "neighbour_images=2, reason_tokens=32, price_file=prices.json), or kind.key=value / "
        "name.key=value for some agents only; values are JSON or text.",
    ),
]


@app.callback()
def agents_group() -> None:
    """Vision agents: CLIP zero-shot, OpenAI-compatible VLMs, local VLMs."""


@app.command("predict")
def predict(
    images: ImagesArg,
    agent: AgentOpt = ["clip"],  # noqa: B006
    task: TaskOption = "apple-leaf",
    clip_model: ClipModelOpt = None,
    device: DeviceOpt = None,
    option: OptionOpt = None,
    json_output: JsonOption = False,
) -> None:
    """Classify images with one or more agents (first look, no retrieval).

    Examples:

      trustorch agents predict leaf.jpg

      trustorch agents predict leaf.jpg --agent clip --clip-model ./clip-vit-base-patch32

      OPENAI_API_KEY=... trustorch agents predict leaf.jpg --agent gpt=openai:gpt-4o --json

      OPENAI_BASE_URL=http://127.0.0.1:8000/v1 trustorch agents predict a.jpg b.jpg
      --agent openai:Qwen/Qwen2.5-VL-7B-Instruct --agent-option timeout_s=120

      trustorch agents predict leaf.jpg --agent hf-vlm:./Qwen2.5-VL-3B-Instruct
      --agent-option reason_tokens=40

      trustorch agents predict leaf.jpg -a clip -a gpt=openai:gpt-4o --agent-option gpt.timeout_s=30
    """
    from agents.options import parse_option_items
    from core.images import image_ref
    from core.task import load_task

    task_obj = load_task(task)
    registry = default_registry()
    specs = [registry.parse(spec) for spec in agent]
    options = registry.assign_options(specs, parse_option_items(option))
    refs = [image_ref(source, decodes=True) for source in images]
    shared: dict[str, Any] = {}

    def clip() -> Any:
        if "clip" not in shared:
            from agents.clip_model import load_clip

            shared["clip"] = load_clip(clip_model, device=device)
        return shared["clip"]

    context = BuildContext(task=task_obj, clip=clip, clip_model=clip_model, device=device)
    built = [registry.build(s, context, o) for s, o in zip(specs, options, strict=True)]
    names = [a.name for a in built]
    if len(set(names)) != len(names):
        raise InputError(f"two agents share a name {names}; name them with name=spec")

    async def run_all() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        with progress_bar(disable=len(refs) < 2) as bar:
            job = bar.add_task("classifying", total=len(refs))
            for ref in refs:
                preds = await asyncio.gather(*(a.predict(ref, task_obj) for a in built))
                rows += [{"image": ref.source, "sha256": ref.sha256, **p.to_dict()} for p in preds]
                bar.advance(job)
        for a in built:
            closer = getattr(getattr(a, "client", None), "aclose", None)
            if closer is not None:
                await closer()
        return rows

    rows = asyncio.run(run_all())
    if json_output:
        emit_json({"task": task_obj.name, "labels": list(task_obj.labels), "predictions": rows})
    else:
        _print_predictions(task_obj.name, rows)
    if all(r["label"] is None for r in rows):
        typer.echo(
            f"error: every agent failed on every image ({len(refs)} images; first: "
            f"{rows[0]['agent']}: {rows[0]['error']})",
            err=True,
        )
        raise typer.Exit(1)


def _print_predictions(task_name: str, rows: list[dict[str, Any]]) -> None:
    print_table(
        f"task {task_name}",
        ["image", "agent", "label", "conf", "second", "latency", "usd", "error"],
        [
            (
                r["image"].rsplit("/", 1)[-1],
                r["agent"],
                r["label"],
                r["confidence"],
                runner_up(r["scores"], r["label"]),
                r["latency_s"],
                r["cost_usd"],
                r["error"],
            )
            for r in rows
        ],
    )


def runner_up(scores: dict[str, float] | None, label: str | None) -> str | None:
    """The second-best label and its score, e.g. ``scab 0.21``."""
    others = sorted(((p, k) for k, p in (scores or {}).items() if k != label), reverse=True)
    return f"{others[0][1]} {others[0][0]:.2f}" if others else None
