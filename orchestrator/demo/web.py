"""``trustorch demo leaf --serve``: a small Gradio page around the demo pipeline.

Upload a leaf photo; the page shows the diagnosis and the same self-contained HTML report the
command line writes (in a sandboxed iframe, so its styles stay its own). Gradio is an optional
extra (``pip install 'trust-orchestrator[demo]'``) imported only here, only when serving.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import Any

from core.errors import InputError, TrustorchError, os_reason
from core.extras import missing_extra_error
from core.images import ImageRef, read_image_bytes
from orchestrator.decision import Decision
from orchestrator.demo.pipeline import DemoPipeline

REPORT_HEIGHT_PX = 1400


def import_gradio() -> Any:
    """The gradio module, or a one-line error naming the extra that provides it."""
    try:
        import gradio
    except ImportError as e:
        raise missing_extra_error(e, needed_by="the web page") from e
    return gradio


def summary_text(decision: Decision) -> str:
    """One line for the page: the diagnosis, its confidence and prediction set."""
    pset = ", ".join(decision.prediction_set) or "-"
    rounds = f"{decision.rounds_used} round(s)"
    if decision.abstained:
        return f"No diagnosis (abstained). Could be: {pset}. {rounds}."
    return (
        f"Diagnosis: {decision.label} ({100 * decision.confidence:.1f}% confidence). "
        f"Prediction set: {pset}. {rounds}."
    )


def report_frame(report_html: str) -> str:
    """The report in a sandboxed iframe (no scripts, its own origin, its own CSS)."""
    return (
        f'<iframe id="report-frame" title="diagnosis report" sandbox="" '
        f'style="width:100%;height:{REPORT_HEIGHT_PX}px;border:0" '
        f'srcdoc="{html.escape(report_html, quote=True)}"></iframe>'
    )


async def diagnose_upload(pipeline: DemoPipeline, path: str | None) -> tuple[str, str]:
    """Diagnose one uploaded file: (summary line, report iframe)."""
    if not path:
        return "Upload a leaf photo to diagnose it.", ""
    # The upload lives in a temporary folder of the web server: the page names it by its file
    # name only.
    name = Path(path).name
    try:
        image = ImageRef.from_path(path)
        decision = dataclasses.replace(await pipeline.diagnose(image), image=name)
        data = read_image_bytes(image)
    except TrustorchError as e:
        return f"Error: {str(e).replace(path, name)}", ""
    return summary_text(decision), report_frame(pipeline.report(decision, data))


def build_app(pipeline: DemoPipeline) -> Any:
    """The Gradio Blocks app (not launched)."""
    gr = import_gradio()

    async def on_upload(path: str | None) -> tuple[str, str]:
        return await diagnose_upload(pipeline, path)

    agents = "\n".join(f"- {s.line()}" for s in pipeline.availability.statuses)
    with gr.Blocks(title="trustorch: apple leaf diagnosis", analytics_enabled=False) as app:
        gr.Markdown(
            "## Apple leaf diagnosis\n"
            "Upload a photo of one apple leaf. Every agent this machine can run looks at it; "
            "their answers are weighted by their measured trust, and similar labelled leaves "
            "are retrieved when the answers cannot be trusted yet."
        )
        with gr.Accordion("Agents on this machine", open=False):
            gr.Markdown(agents)
        with gr.Row():
            image = gr.Image(
                type="filepath",
                image_mode=None,
                sources=["upload"],
                label="Leaf photo",
                elem_id="leaf-input",
                height=320,
            )
            summary = gr.Textbox(
                label="Diagnosis", elem_id="diagnosis-summary", interactive=False, lines=3
            )
        report = gr.HTML(elem_id="report")
        image.upload(on_upload, inputs=image, outputs=[summary, report])
    return app


def check_port(host: str, port: int) -> None:
    """InputError when ``host:port`` cannot be listened on (in use, not this machine's, ...):
    checked before any model loads."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as e:
        raise InputError(
            f"cannot serve on {host}:{port} ({os_reason(e)}); choose another --port or --host"
        ) from None


def serve(pipeline: DemoPipeline, *, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted (no share link, no telemetry)."""
    app = build_app(pipeline)
    app.queue(default_concurrency_limit=1)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            show_error=True,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
        )
    except OSError as e:
        first = str(e).splitlines()[0] if str(e) else os_reason(e)
        raise InputError(f"cannot serve on {host}:{port} ({first})") from None
