"""The registry of agent kinds: parsing once, extending without mutation, options from the
command line (unscoped, by kind, by name), the kinds' own probes; built with the tiny seeded
CLIP and the study's recorded answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agents.clip_model import ClipModel, load_clip
from agents.kinds import CLIP_KIND
from agents.options import OptionItem, parse_option_items
from agents.registry import AgentSpec, BuildContext, default_registry
from core.errors import InputError
from core.task import Task
from orchestrator.agent_kinds import agent_registry


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> ClipModel:
    return load_clip(str(tiny_clip_dir), device="cpu")


def test_each_layer_registers_its_kinds_once() -> None:
    assert [k.name for k in default_registry().kinds] == ["clip", "openai", "hf-vlm"]
    extended = agent_registry()
    assert [k.name for k in extended.kinds] == [
        "clip",
        "openai",
        "hf-vlm",
        "retrieval",
        "replay",
        "py",
    ]
    # extending returns a new registry: the agents layer's stays as it was
    assert default_registry().kind("replay") is None
    with pytest.raises(ValueError, match=r"registered twice: \['clip'\]"):
        default_registry().with_kinds(CLIP_KIND)


def test_parse_checks_kind_and_target() -> None:
    registry = agent_registry()
    assert registry.parse("q=replay:runs/a.csv#qwen") == AgentSpec(
        "replay", "runs/a.csv#qwen", "q", "q=replay:runs/a.csv#qwen"
    )
    assert registry.parse("rag=retrieval") == AgentSpec("retrieval", "", "rag", "rag=retrieval")
    with pytest.raises(InputError, match=r"unknown agent kind 'gemini'.*replay:<file>#<agent>"):
        registry.parse("gemini:pro")
    with pytest.raises(InputError, match=r"unknown agent kind 'replay'"):
        default_registry().parse("replay:runs/a.csv#qwen")
    with pytest.raises(InputError, match=r"agent spec 'hf-vlm': give a hub id or folder"):
        registry.parse("hf-vlm")
    with pytest.raises(InputError, match=r"agent spec 'retrieval:x': retrieval takes no ':'"):
        registry.parse("retrieval:x")


def test_option_items_from_the_command_line() -> None:
    items = parse_option_items(["timeout_s=30", "gpt.max-retries=0", 'clip.templates=["$label"]'])
    assert items == [
        OptionItem("timeout_s", 30),
        OptionItem("max_retries", 0, "gpt"),
        OptionItem("templates", ["$label"], "clip"),
    ]
    with pytest.raises(InputError, match=r"^--agent-option must be \[kind or name.\]key=value"):
        parse_option_items(["timeout_s"], flag="--agent-option")


def test_options_go_to_the_agents_that_take_them() -> None:
    registry = agent_registry()
    specs = [registry.parse(s) for s in ("clip", "gpt=openai:gpt-4o", "local=openai:qwen")]
    items = parse_option_items(["max_bytes=4096", "openai.timeout_s=9", "gpt.logprobs=false"])
    assert registry.assign_options(specs, items) == [
        {"max_bytes": 4096},
        {"max_bytes": 4096, "timeout_s": 9.0, "logprobs": False},
        {"max_bytes": 4096, "timeout_s": 9.0},
    ]
    bad_key = parse_option_items(["colour=red", "clip.timeout_s=3"])
    with pytest.raises(
        InputError, match=re.escape("no agent takes option(s) ['clip.timeout_s', 'colour']")
    ):
        registry.assign_options(specs, bad_key)
    with pytest.raises(
        InputError, match=r"--option mine.batch_size: no agent of kind or name 'mine'"
    ):
        registry.assign_options(specs, parse_option_items(["mine.batch_size=2"]))
    message = "agent spec 'gpt=openai:gpt-4o': option timeout_s='soon' must be a number > 0"
    with pytest.raises(InputError, match=re.escape(message)):
        registry.assign_options(specs, parse_option_items(["gpt.timeout_s=soon"]))
    secret = "agent spec 'gpt=openai:gpt-4o': option api_key=<secret> must be a text"
    with pytest.raises(InputError, match=re.escape(secret)):
        registry.assign_options(specs, parse_option_items(['gpt.api_key=["sk-x"]']))
    assert registry.recorded_options(specs[1], {"api_key": "sk-x", "timeout_s": 9.0}) == {
        "timeout_s": 9.0
    }


def test_build_shares_the_clip_and_applies_options(clip: ClipModel, apple_task: Task) -> None:
    registry = agent_registry()
    context = BuildContext(task=apple_task, clip=clip)
    agent = registry.build("mine=clip", context, {"batch_size": "3"})
    assert agent.name == "mine" and agent.clip is clip and agent.batch_size == 3
    with pytest.raises(InputError, match=r"agent spec 'clip': unknown option\(s\) \['k'\]"):
        registry.build("clip", context, {"k": 3})


def test_orchestrator_kinds_build_through_the_same_registry(
    paper_dir: Path, apple_task: Task
) -> None:
    from orchestrator.components import build_agents

    spec = f"q=replay:{paper_dir / 'case3_trust_rag.csv'}#qwen"
    built = build_agents([spec], task=apple_task, options=[{}])
    assert [a.name for a in built.agents] == ["q"]
    with pytest.raises(InputError, match=r"unknown option\(s\) \['timeout_s'\]"):
        build_agents([spec], task=apple_task, options=[{"timeout_s": 3}])


def test_build_agents_passes_each_agent_its_options(tiny_clip_dir: Path, apple_task: Task) -> None:
    from agents.clip_agent import ClipAgent
    from orchestrator.components import build_agents

    specs = [f"clip:{tiny_clip_dir}", f"other=clip:{tiny_clip_dir}"]
    built = build_agents(specs, task=apple_task, options=[{"batch_size": 2}, {}])
    first, second = built.agents
    assert first.batch_size == 2 and second.batch_size == ClipAgent(first.clip).batch_size


def test_kinds_probe_this_machine_themselves(tmp_path: Path) -> None:
    registry = default_registry()
    (openai,) = registry.probe({})
    assert not openai.available and openai.line().startswith("openai skipped: set OPENAI_API_KEY")
    folder = tmp_path / "vlm"
    folder.mkdir()
    statuses = registry.probe({"OPENAI_API_KEY": "sk-x", "TRUSTORCH_HF_VLM": str(folder)})
    assert [(s.name, s.spec) for s in statuses] == [
        ("openai", "openai:gpt-4o"),
        ("hf-vlm", f"hf-vlm:{folder}"),
    ]
