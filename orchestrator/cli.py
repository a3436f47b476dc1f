"""The ``trustorch`` root: it mounts each folder's sub-app and maps known errors to one line.

Each sub-app is imported only when its command runs: ``trustorch --help`` lists every command
from the one-line help kept here (``MOUNTS``), so printing it imports none of the modules
behind them (models, stores, the graph), and ``trustorch eval ...`` imports the eval commands
only. ``build_app`` with every command loaded renders the same help (a test holds them equal).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import typer

ROOT_HELP = (
    "Trust-aware multi-model image classification.\n\n"
    "Add --debug (anywhere) or TRUSTORCH_DEBUG=1 to see tracebacks."
)


def _run_command() -> Callable[..., Any]:
    from orchestrator.run_cli import run

    return run


def _eval_app() -> typer.Typer:
    from eval.cli import app
    from orchestrator.replay.cli import replay

    if "replay" not in {c.name for c in app.registered_commands}:
        app.command("replay")(replay)
    return app


def _agents_app() -> typer.Typer:
    from agents.cli import app

    return app


def _demo_app() -> typer.Typer:
    from orchestrator.demo.cli import app

    return app


def _index_app() -> typer.Typer:
    from rag.cli import app

    return app


@dataclass(frozen=True)
class Mount:
    """A command of the root: its name, the help ``trustorch --help`` shows for it, and how to
    import it (a command function, or a sub-app)."""

    name: str
    help: str
    load: Callable[[], Any]
    group: bool = True


MOUNTS = {
    m.name: m
    for m in (
        Mount(
            "run",
            "Classify images with several agents, trust-aware fusion and retrieval, resumably.",
            _run_command,
            group=False,
        ),
        Mount(
            "eval", "Offline evaluation: calibration, trust profiles, retrieval, replay.", _eval_app
        ),
        Mount(
            "agents",
            "Vision agents: CLIP zero-shot, OpenAI-compatible VLMs, local VLMs.",
            _agents_app,
        ),
        Mount(
            "demo",
            "Demos: one command from a photo to a diagnosis with its whole trace.",
            _demo_app,
        ),
        Mount("index", "The image retrieval index (CLIP embeddings in Chroma).", _index_app),
    )
}


def _not_loaded() -> None:
    raise RuntimeError("a command that was listed but not loaded was run")


def installed_version() -> str:
    """The installed version of the package (``unknown`` when run from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trust-orchestrator")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"trustorch {installed_version()}")
        raise typer.Exit()


def build_app(load: Collection[str] = ()) -> typer.Typer:
    """The root app with the commands ``load`` imported; the others are listed by name and
    help only."""
    app = typer.Typer(
        name="trustorch",
        help=ROOT_HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def root(
        version: bool = typer.Option(
            False,
            "--version",
            help="Print the installed version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ) -> None:
        """Trust-aware multi-model image classification."""

    for mount in MOUNTS.values():
        loaded = mount.name in load
        if mount.group:
            app.add_typer(mount.load() if loaded else typer.Typer(help=mount.help), name=mount.name)
        elif loaded:
            app.command(mount.name)(mount.load())
        else:
            app.command(mount.name, help=mount.help)(_not_loaded)
    return app


def command_of(args: list[str]) -> str | None:
    """The root command ``args`` run (the root itself takes no option with a value)."""
    return next((a for a in args if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("TRUSTORCH_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    command = command_of(args)
    app = build_app({command} if command in MOUNTS else ())
    try:
        result = app(args=args, prog_name="trustorch", standalone_mode=False)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:
        return _known_error(e, debug)
    return result if isinstance(result, int) else 0


def _known_error(e: Exception, debug: bool) -> int:
    """A known error as one line and its exit code; anything else is raised again."""
    from core.errors import TrustorchError

    if isinstance(e, TrustorchError):
        if debug:
            raise e
        typer.echo(f"error: {e}", err=True)
        return 1
    # Usage errors come from the click that typer ships (its own copy in typer >= 0.29):
    # recognised by shape rather than by class, so either copy is handled.
    if debug or not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
        if type(e).__name__ == "Abort" and not debug:
            typer.echo("aborted", err=True)
            return 130
        raise e
    command = getattr(getattr(e, "ctx", None), "command_path", None) or "trustorch"
    message = e.format_message()
    if message:  # a group run without a command has printed its help and says nothing more
        typer.echo(f"error: {message} (see '{command} --help')", err=True)
    return int(e.exit_code)


def entry() -> None:
    sys.exit(main())
