"""Hostile inputs: unusable trust and policy files, non-finite numbers on their way to JSON,
labels spelled several ways, token log-probabilities that are no probabilities.

Trust and policy files go through the real CLI (``trustorch run --trust`` / ``--policy-file``,
in process, and once as a subprocess): each bad file is exit 1 and one line naming the file,
the profile and the field. ``make_nan_agent`` builds a FAKE agent (a real ``Agent`` that answers
the image's folder name with a score distribution holding a NaN).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai_server import chat_reply, openai_server, split_tokens

from agents.openai_agent import OpenAIAgent
from agents.openai_compat import OpenAIChatClient, TokenChoice
from agents.reply_parsing import label_distribution
from agents.types import Prediction
from core.images import ImageRef
from core.jsonio import dumps_json
from core.task import Task, label_key, label_spellings
from eval.profile import default_trust_profile, fit_trust_profile, save_trust_profiles
from eval.profile_schema import trust_profile_file_schema
from eval.recorded.records import Record, read_records
from orchestrator.cli import main
from orchestrator.policies.policy_file import policy_file_schema
from orchestrator.policies.trust import TrustPolicy
from orchestrator.policies.trust_fit import save_trust_policy

HERE = Path(__file__).resolve()
LABELS = ("black-rot", "healthy", "rust", "scab")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not strict JSON: {name}")


def strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN and infinities, as a strict JSON reader does."""
    return json.loads(text, parse_constant=_refuse_constant)


# --- trust profile files -------------------------------------------------------------------


def _records(agent: str) -> list[Record]:
    """40 labelled answers, right more often at higher confidence (an isotonic map of a few
    knots)."""
    rows = []
    for i in range(40):
        truth = LABELS[i % 4]
        confidence = 0.5 + 0.5 * (i % 10) / 10
        pred = truth if i % 10 >= 3 else LABELS[(i + 1) % 4]
        rows.append(Record(str(i), agent, truth, pred, confidence))
    return rows


@pytest.fixture(scope="module")
def good_profiles() -> dict[str, Any]:
    gpt = fit_trust_profile("gpt", _records("gpt"), LABELS, bootstrap=20, cv_folds=0)
    assert gpt.recalibration["method"] == "isotonic" and len(gpt.recalibration["knots"]) >= 2
    return {"gpt": gpt, "qwen": default_trust_profile("qwen", LABELS)}


@pytest.fixture
def good_file(tmp_path: Path, good_profiles) -> dict[str, Any]:
    path = tmp_path / "good.json"
    save_trust_profiles(path, good_profiles)
    return json.loads(path.read_text())


def _nested(depth: int) -> Any:
    value: Any = 0.5
    for _ in range(depth):
        value = [value]
    return value


def _set(path: str, value: Any):
    def edit(data: dict) -> None:
        *parents, last = path.split("/")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is _DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


_DELETE = object()
GPT = "profiles/gpt"

BAD_TRUST_FILES = [
    ("nan-map-value", _set(f"{GPT}/recalibration/values/1", math.nan),
     "profile 'gpt', field 'recalibration.values[1]': must be a finite number in [0, 1], got nan"),
    ("map-value-1.5", _set(f"{GPT}/recalibration/values/0", 1.5),
     "profile 'gpt', field 'recalibration.values[0]': must be a finite number in [0, 1], got 1.5"),
    ("infinite-knot", _set(f"{GPT}/recalibration/knots/0", -math.inf),
     "profile 'gpt', field 'recalibration.knots[0]': must be a finite number, got -inf"),
    ("knots-not-increasing", lambda d: d["profiles"]["gpt"]["recalibration"]["knots"].reverse(),
     "profile 'gpt', field 'recalibration': knots must be strictly increasing"),
    ("length-mismatch", lambda d: d["profiles"]["gpt"]["recalibration"]["values"].pop(),
     "profile 'gpt', field 'recalibration': 'knots' and 'values' differ in length"),
    ("unknown-map", _set(f"{GPT}/recalibration/method", "platt"),
     "profile 'gpt', field 'recalibration': must be one of 'temperature', 'isotonic', "
     "'histogram', 'shrink', got 'platt'"),
    ("map-without-method", _set(f"{GPT}/recalibration/method", _DELETE),
     "profile 'gpt', field 'recalibration': must name its kind"),
    ("shrink-prior-2", _set("profiles/qwen/recalibration/prior", 2.0),
     "profile 'qwen', field 'recalibration.prior': must be a finite number in [0, 1], got 2.0"),
    ("nan-accuracy", _set(f"{GPT}/accuracy", math.nan),
     "profile 'gpt', field 'accuracy': must be a finite number in [0, 1], got nan"),
    ("infinite-ece", _set(f"{GPT}/ece", math.inf),
     "profile 'gpt', field 'ece': must be a finite number, got inf"),
    ("nan-interval", _set(f"{GPT}/intervals/accuracy/0", math.nan),
     "profile 'gpt', field 'intervals.accuracy[0]': must be a finite number, got nan"),
    ("recall-as-text", _set(f"{GPT}/per_class_recall/rust", "0.9"),
     "profile 'gpt', field 'per_class_recall.rust': must be a number, got '0.9'"),
    ("count-as-text", _set(f"{GPT}/n", "40"),
     "profile 'gpt', field 'n': must be a whole number, got '40'"),
    ("count-as-float", _set(f"{GPT}/confusion/0/0", 2.5),
     "profile 'gpt', field 'confusion[0][0]': must be a whole number, got 2.5"),
    ("negative-count", _set(f"{GPT}/confusion/1/1", -3),
     "profile 'gpt', field 'confusion[1][1]': must be >= 0, got -3"),
    ("flag-as-number", _set(f"{GPT}/default", 0),
     "profile 'gpt', field 'default': must be true or false, got 0"),
    ("labels-as-text", _set(f"{GPT}/labels", "rust"),
     "profile 'gpt', field 'labels': must be a list, got 'rust'"),
    ("empty-label", _set(f"{GPT}/labels/2", " "),
     "profile 'gpt', field 'labels[2]': must be a non-empty string"),
    ("short-confusion", lambda d: d["profiles"]["gpt"]["confusion"].pop(),
     "profile 'gpt': 'confusion' is 3 x [4], not 4 x 4 (4 labels)"),
    ("missing-field", _set(f"{GPT}/confusion", _DELETE),
     "profile 'gpt', field 'confusion': is missing"),
    ("unknown-field", _set(f"{GPT}/trust_me", True),
     "profile 'gpt', field 'trust_me': is not a known field"),
    ("unknown-version", _set("version", 2), "field 'version': must be 1, got 2"),
    ("missing-version", _set("version", _DELETE), "field 'version': is missing"),
    ("profiles-as-list", _set("profiles", []), "field 'profiles': must be an object, got list"),
    ("profile-as-number", _set("profiles/gpt", 3), "profile 'gpt': must be an object, got 3"),
    ("deep-nesting", _set(f"{GPT}/recalibration/values", _nested(200)),
     "invalid JSON (nested deeper than 64 levels)"),
]  # fmt: skip


def _run_with(tmp_path: Path, capsys, *args: str) -> tuple[int, list[str]]:
    """``trustorch run`` with a CLIP folder that does not exist: a bad file must fail first."""
    out = tmp_path / "out.jsonl"
    code = main(
        [
            "run",
            str(tmp_path),
            "--agent",
            f"gpt=clip:{tmp_path / 'no-clip'}",
            *args,
            "--out",
            str(out),
        ]
    )
    assert not out.exists()
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("case", "edit", "expected"), BAD_TRUST_FILES, ids=[c[0] for c in BAD_TRUST_FILES]
)
def test_bad_trust_file_is_one_line_naming_profile_and_field(
    tmp_path, capsys, good_file, case, edit, expected
):
    data = copy.deepcopy(good_file)
    edit(data)
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(data))  # Python's writer: NaN and Infinity as bare words
    code, err = _run_with(tmp_path, capsys, "--trust", str(path))
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {path}:"), err
    assert expected in err[0]


def test_the_good_trust_file_loads_and_runs_past_the_file(tmp_path, capsys, good_file):
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(good_file))
    code, err = _run_with(tmp_path, capsys, "--trust", str(path))
    # past the trust file, the run stops at the folder without images
    assert code == 1 and "no readable images" in err[-1] and "trust.json" not in err[-1]


def test_a_bad_trust_file_through_the_installed_command(tmp_path, good_file):
    data = copy.deepcopy(good_file)
    data["profiles"]["gpt"]["recalibration"]["values"][1] = math.nan
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(data))
    script = Path(sys.executable).with_name("trustorch")
    command = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "from orchestrator.cli import entry; entry()"]
    )
    args = [
        "run",
        str(tmp_path),
        "--agent",
        "clip:/no/clip",
        "--trust",
        str(path),
        "--out",
        str(tmp_path / "o.jsonl"),
    ]
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {path}: profile 'gpt', field 'recalibration.values[1]': "
        "must be a finite number in [0, 1], got nan"
    ]


def test_the_file_schemas_are_exported():
    schema = trust_profile_file_schema()
    assert schema["properties"]["version"] == {"const": 1, "title": "Version", "type": "integer"}
    isotonic = schema["$defs"]["IsotonicMap"]["properties"]
    assert isotonic["values"]["items"] == {"maximum": 1, "minimum": 0, "type": "number"}
    assert schema["$defs"]["StoredTrustProfile"]["additionalProperties"] is False
    policy = policy_file_schema()
    assert set(policy["$defs"]["PolicySettings"]["required"]) == {"name", "weights", "thresholds"}
    json.dumps(schema, allow_nan=False), json.dumps(policy, allow_nan=False)


# --- policy files --------------------------------------------------------------------------


@pytest.fixture
def good_policy(tmp_path: Path) -> dict[str, Any]:
    policy = TrustPolicy.from_profiles(
        {}, thresholds={"first": 0.8}, weights={"first": {"gpt": 1.5}, "reeval": {"gpt": 0.5}}
    )
    path = tmp_path / "good-policy.json"
    save_trust_policy(path, policy, fitted_on={"rows": 10})
    return json.loads(path.read_text())


BAD_POLICY_FILES = [
    ("nan-weight", _set("policy/weights/first/gpt", math.nan),
     "field 'policy.weights.first.gpt': must be a finite number >= 0, got nan"),
    ("negative-weight", _set("policy/weights/reeval/gpt", -1.0),
     "field 'policy.weights.reeval.gpt': must be a finite number >= 0, got -1.0"),
    ("threshold-1.5", _set("policy/thresholds/evidence", 1.5),
     "field 'policy.thresholds.evidence': must be a finite number in [0, 1], got 1.5"),
    ("unknown-stage", _set("policy/thresholds/later", 0.5),
     "field 'policy.thresholds': key 'later' must be 'first', 'evidence' or 'reeval'"),
    ("weight-as-text", _set("policy/weights/first/gpt", "2"),
     "field 'policy.weights.first.gpt': must be a number, got '2'"),
    ("unknown-agent-model", _set("policy/agent_model", "magic"),
     "field 'policy.agent_model': must be 'calibrated', 'confusion' or 'joint', got 'magic'"),
    ("missing-thresholds", _set("policy/thresholds", _DELETE),
     "field 'policy.thresholds': is missing"),
    ("unknown-setting", _set("policy/temperature", 2.0),
     "field 'policy.temperature': is not a known field"),
    ("unknown-version", _set("version", 7), "field 'version': must be 1, got 7"),
    ("deep-nesting", _set("fitted_on/rows", _nested(100)),
     "invalid JSON (nested deeper than 64 levels)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "edit", "expected"), BAD_POLICY_FILES, ids=[c[0] for c in BAD_POLICY_FILES]
)
def test_bad_policy_file_is_one_line_naming_the_field(
    tmp_path, capsys, good_policy, case, edit, expected
):
    data = copy.deepcopy(good_policy)
    edit(data)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(data))
    code, err = _run_with(tmp_path, capsys, "--policy-file", str(path))
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {path}:") and expected in err[0], err


def test_the_good_policy_file_loads(tmp_path, good_policy):
    from orchestrator.policies.trust_fit import load_trust_policy_settings

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(good_policy))
    settings = load_trust_policy_settings(path)
    assert settings["weights"] == {"first": {"gpt": 1.5}, "reeval": {"gpt": 0.5}}
    assert settings["thresholds"] == {"first": 0.8, "evidence": 0.9, "reeval": 0.9}
    assert "name" not in settings and "retrieval_source" not in settings


# --- finite JSON out -----------------------------------------------------------------------


def test_dumps_json_writes_non_finite_numbers_as_null():
    value = {
        "a": math.nan,
        "b": [math.inf, 1.5, -math.inf],
        "c": np.float32("nan"),
        "d": np.float64(0.25),
        "e": {"f": (math.nan,)},
        "g": "NaN",
    }
    plain = lambda v: v.item()  # noqa: E731 - numpy scalars, as core.cli does
    text = dumps_json(value, default=plain)
    assert strict_loads(text) == {
        "a": None,
        "b": [None, 1.5, None],
        "c": None,
        "d": 0.25,
        "e": {"f": [None]},
        "g": "NaN",
    }
    assert dumps_json({"x": 1.0}) == json.dumps({"x": 1.0})


def make_nan_agent(name: str = "nan") -> object:
    """FAKE agent (see the module docstring)."""

    class NanScores:
        can_reevaluate = False

        def __init__(self) -> None:
            self.name = name

        async def predict(self, image: ImageRef, task: Task, *, round: int = 0, **kw: Any):
            label = task.normalise_label(Path(image.source).parent.name)
            scores = {y: (0.9 if y == label else math.nan) for y in task.labels}
            return Prediction(
                agent=self.name,
                label=label,
                confidence=0.9,
                scores=scores,
                round=round,
                latency_s=math.nan,
            )

    return NanScores()


def test_a_run_with_nan_in_its_answers_writes_strict_json(tmp_path, capsys):
    sys.path.insert(0, str(HERE.parent))
    from test_runner import make_images

    data = make_images(tmp_path / "data", per_label=1)
    out = tmp_path / "out.jsonl"
    spec = f"py:{HERE}:make_nan_agent"
    code = main(["run", str(data), "--agent", spec, "--out", str(out), "--json"])
    assert code == 0
    summary = strict_loads(capsys.readouterr().out)
    lines = [strict_loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == summary["images"] == 3
    for decision in lines:
        (answer,) = [p for p in decision["predictions"] if p["round"] == 0]
        assert answer["latency_s"] is None
        assert sorted(v for v in answer["scores"].values() if v is not None) == [0.9]
    # the default profile trusts no one: every image abstains, and the summary says so
    assert summary["labelled"] == summary["abstained"] == 3


# --- labels spelled several ways -----------------------------------------------------------

SPELLINGS = {
    "black-rot": ["BLACK ROT", "black_rot", "Black-Rot"],
    "scab": ["Scab", "SCAB"],
    "healthy": ["healthy"],
    "rust": ["rust", "Rust"],
}


def _wide_file(path: Path, respell: bool) -> Path:
    """A wide CSV of two agents on 40 images; with ``respell`` the truths and predictions
    use other spellings of the labels (different ones on the same row)."""
    lines = ["id,category,a_pred,a_conf,b_pred,b_conf"]
    for i in range(40):
        truth = LABELS[i % 4]
        a = truth if i % 5 else LABELS[(i + 1) % 4]
        b = truth if i % 3 else LABELS[(i + 2) % 4]
        cells = [truth, a, b]
        if respell:
            cells = [SPELLINGS[c][(i + j) % len(SPELLINGS[c])] for j, c in enumerate(cells)]
        lines.append(f"{i},{cells[0]},{cells[1]},{0.6 + i % 4 / 10},{cells[2]},0.7")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_spellings_of_one_label_score_as_that_label(tmp_path, capsys):
    canonical = _wide_file(tmp_path / "canonical.csv", respell=False)
    spelled = _wide_file(tmp_path / "spelled.csv", respell=True)
    runs = {}
    for name, path in (("canonical", canonical), ("spelled", spelled)):
        code = main(
            [
                "eval",
                "trust",
                str(path),
                "--out",
                str(tmp_path / f"{name}.json"),
                "--bootstrap",
                "0",
                "--folds",
                "0",
                "--json",
            ]
        )
        captured = capsys.readouterr()
        assert code == 0, captured.err
        runs[name] = (strict_loads(captured.out), captured.err)
    figures = {
        name: {a: p["accuracy"] for a, p in report["agents"].items()}
        for name, (report, _) in runs.items()
    }
    assert figures["canonical"] == {"a": 0.8, "b": pytest.approx(26 / 40)}
    assert figures["spelled"] == figures["canonical"]
    notes = [line for line in runs["spelled"][1].splitlines() if line.startswith("note: ")]
    assert notes[0] == (
        "note: labels spelled more than one way were merged: 'Black-Rot', 'black_rot' as "
        "'BLACK ROT'; 'Scab' as 'SCAB'; 'Rust' as 'rust'"
    )
    assert "pass --task apple-leaf" in notes[1]
    assert "note:" not in runs["canonical"][1]


def test_scores_and_task_files_read_label_spellings_too(tmp_path, apple_task):
    rows = [
        {
            "id": "1",
            "agent": "a",
            "truth": "BLACK ROT",
            "pred": "black_rot",
            "confidence": 0.8,
            "scores": {"Black Rot": 0.8, "RUST": 0.2},
        },
        {"id": "2", "agent": "a", "truth": "apple scab", "pred": "Scab", "confidence": 0.6},
    ]
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_records(path, task=apple_task)
    assert [(r.truth, r.pred) for r in records.records] == [
        ("black-rot", "black-rot"),
        ("scab", "scab"),
    ]
    assert records.records[0].scores == {"black-rot": 0.8, "healthy": 0.0, "rust": 0.2, "scab": 0}
    assert records.label_notes == [
        "true labels read as task apple-leaf's: 'BLACK ROT' as 'black-rot'; 'apple scab' as 'scab'"
    ]


def test_label_key_and_spellings():
    assert {label_key(t) for t in ("BLACK ROT", "black_rot", " Black--Rot. ", '"black rot"')} == {
        "black-rot"
    }
    spellings = label_spellings(["b", "A", "a", "a"], also_seen=["B ", "c"])
    assert spellings.labels == ("a", "b")
    assert spellings.merged == {"a": ("A",), "b": ("B",)}
    assert spellings.normalise("  A ") == "a" and spellings.normalise("c") is None


# --- token log-probabilities ---------------------------------------------------------------


def _label_tokens(task: Task, logprob: float, top: tuple = ()) -> list[TokenChoice]:
    return [
        TokenChoice('{"label": "', 0.0),
        TokenChoice("rust", logprob, top),
        TokenChoice('", "confidence": 0.95}', 0.0),
    ]


def test_an_unobserved_rest_goes_to_the_other_labels(apple_task):
    scores = label_distribution(_label_tokens(apple_task, math.log(0.9)), apple_task, "rust")
    assert scores == pytest.approx(
        {"rust": 0.9, "black-rot": 0.1 / 3, "healthy": 0.1 / 3, "scab": 0.1 / 3}
    )
    top = (("rust", math.log(0.9)), ("scab", math.log(0.06)))
    scores = label_distribution(_label_tokens(apple_task, math.log(0.9), top), apple_task, "rust")
    assert scores == pytest.approx({"rust": 0.9, "scab": 0.06, "black-rot": 0.02, "healthy": 0.02})


def test_logprobs_that_are_no_probabilities_are_ignored(apple_task):
    nan = label_distribution(_label_tokens(apple_task, math.nan), apple_task, "rust")
    assert nan is None  # the answer falls back to its stated confidence
    top = (("rust", math.log(0.7)), ("scab", math.nan), ("healthy", 3.0))
    scores = label_distribution(_label_tokens(apple_task, math.log(0.7), top), apple_task, "rust")
    assert scores == pytest.approx({"rust": 0.7, "black-rot": 0.1, "healthy": 0.1, "scab": 0.1})


def _logprob_reply(content: str, label_logprob: float) -> Any:
    entries = []
    for token in split_tokens(content):
        logprob = label_logprob if token == "rust" else 0.0
        entries.append({"token": token, "logprob": logprob, "bytes": None, "top_logprobs": []})
    return chat_reply(content, logprobs=entries)


@pytest.mark.parametrize(("logprob", "confidence"), [(math.log(0.9), 0.9), (math.nan, 0.95)])
def test_logprobs_through_the_server(tmp_path, apple_task, logprob, confidence):
    from PIL import Image

    path = tmp_path / "leaf.png"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(path)
    content = '{"label": "rust", "reason": "orange spots", "confidence": 0.95}'
    assert "rust" in split_tokens(content)

    async def ask(server: Any) -> Prediction:
        client = OpenAIChatClient(
            model="gpt-4o",
            base_url=server.base_url,
            api_key="sk-test",
            timeout_s=5.0,
            max_retries=0,
        )
        try:
            return await OpenAIAgent(client).predict(ImageRef.from_path(path), apple_task)
        finally:
            await client.aclose()

    import asyncio

    with openai_server([_logprob_reply(content, logprob)]) as server:
        pred = asyncio.run(ask(server))
    assert pred.label == "rust" and pred.error is None
    assert pred.confidence == pytest.approx(confidence)
    if math.isnan(logprob):
        assert pred.scores is None
    else:
        assert pred.scores is not None and pred.scores["scab"] == pytest.approx(0.1 / 3)
