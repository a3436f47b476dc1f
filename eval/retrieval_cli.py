"""``trustorch eval retrieval``: leave-one-out evaluation of the retrieval vote over an index."""

from __future__ import annotations

from typing import Annotated

import typer

from core.cli import JsonOption, TaskOption, emit_json, print_table
from core.errors import InputError
from rag.cli import ChromaUrlOption, IndexDirOption, open_store


def retrieval(
    loo: Annotated[
        bool,
        typer.Option("--loo/--no-loo", help="Leave-one-out over the index (the only mode)."),
    ] = True,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Neighbours per query.")] = 10,
    task: TaskOption = "apple-leaf",
    model: Annotated[
        str | None,
        typer.Option("--model", help="The index's embedding model (needed when several)."),
    ] = None,
    index_dir: IndexDirOption = None,
    chroma_url: ChromaUrlOption = None,
    folds: Annotated[
        int, typer.Option("--folds", min=2, help="Cross-fitting folds of the fitted vote.")
    ] = 10,
    bins: Annotated[int, typer.Option("--bins", min=1, help="ECE bins.")] = 10,
    json_out: JsonOption = False,
) -> None:
    """Accuracy, macro-F1, ECE and CCC of each vote rule, leave-one-out over an index.

    Each item is queried with its stored vector and left out of its own neighbours. The fitted
    softmax vote is cross-fitted (an item's fold is scored by a vote fitted on the others).

    Examples:
      trustorch eval retrieval --loo -k 10
      trustorch eval retrieval -k 5 --task apple-leaf --index-dir ./index --json
      trustorch eval retrieval --chroma-url http://127.0.0.1:8000 --model my-clip
    """
    from core.task import load_task
    from eval.metric_table import Report, metrics_in
    from eval.retrieval import evaluate_loo

    if not loo:
        raise InputError("only leave-one-out evaluation over the index is available (--loo)")
    the_task = load_task(task)
    store = open_store(index_dir, chroma_url, create=False)
    index = store.existing(the_task.name, model)
    result = evaluate_loo(index, the_task, k=k, folds=folds, bins=bins, show_progress=not json_out)
    if json_out:
        emit_json(result.to_dict())
        return
    typer.echo(
        f"leave-one-out retrieval · {result.task} · {result.model} · n={result.n} · "
        f"k={result.k} · ECE with {result.bins} bins · softmax cross-fitted in {result.folds} folds"
    )
    shown = metrics_in(Report.RETRIEVAL)
    print_table(
        "",
        ["vote", "accuracy", "macro-F1", *[m.name for m in shown]],
        [
            (v.rule, v.accuracy, v.macro_f1, *[v.calibration[m.key] for m in shown])
            for v in result.variants
        ],
    )
