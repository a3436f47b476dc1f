"""The ``trustorch`` root: it mounts each folder's sub-app and maps known errors to one line."""

from __future__ import annotations

import os
import sys

import typer

from agents.cli import app as agents_app
from core.errors import TrustorchError
from eval.cli import app as eval_app
from orchestrator.demo.cli import app as demo_app
from orchestrator.replay.cli import replay
from orchestrator.run_cli import run
from rag.cli import app as index_app

app = typer.Typer(
    name="trustorch",
    help="Trust-aware multi-model image classification.\n\n"
    "Add --debug (anywhere) or TRUSTORCH_DEBUG=1 to see tracebacks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
eval_app.command("replay")(replay)
app.add_typer(eval_app, name="eval")
app.add_typer(agents_app, name="agents")
app.add_typer(demo_app, name="demo")
app.add_typer(index_app, name="index")
app.command("run")(run)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("TRUSTORCH_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        result = app(args=args, prog_name="trustorch", standalone_mode=False)
    except TrustorchError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:
        # Usage errors come from the click that typer ships (its own copy in typer >= 0.29):
        # recognised by shape rather than by class, so either copy is handled.
        if debug or not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            if type(e).__name__ == "Abort" and not debug:
                typer.echo("aborted", err=True)
                return 130
            raise
        command = getattr(getattr(e, "ctx", None), "command_path", None) or "trustorch"
        typer.echo(f"error: {e.format_message()} (see '{command} --help')", err=True)
        return int(e.exit_code)
    return result if isinstance(result, int) else 0


def entry() -> None:
    sys.exit(main())
