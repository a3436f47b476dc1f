from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.types import Prediction
from core.errors import InputError
from core.images import ImageRef
from core.task import load_task, preset_names
from eval.recorded.records import read_records


def test_apple_leaf_preset(apple_task):
    assert apple_task.labels == ("black-rot", "healthy", "rust", "scab")
    assert "apple-leaf" in preset_names()
    assert apple_task.normalise_label("Black Rot") == "black-rot"
    assert apple_task.normalise_label("BLACK_ROT") == "black-rot"
    assert apple_task.normalise_label("apple scab.") == "scab"
    assert apple_task.normalise_label("mildew") is None


def test_unknown_task_and_bad_task_file(tmp_path):
    with pytest.raises(InputError, match="unknown task 'nope'"):
        load_task("nope")
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"name": "x", "labels": ["a", "b"], "descriptions": {"a": "A"}}))
    with pytest.raises(InputError, match="descriptions missing"):
        load_task(bad)


def test_prediction_is_plain_and_validated():
    p = Prediction(
        agent="a", label="rust", confidence=np.float32(0.5), scores={"rust": np.float64(1.0)}
    )
    assert type(p.confidence) is float and type(p.scores["rust"]) is float
    assert Prediction.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError):
        Prediction(agent="a", label="rust", confidence=1.5)


def test_image_ref_identity(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    ref = ImageRef.from_path(f)
    assert ref.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(InputError, match="no such image"):
        ImageRef.from_path(tmp_path / "missing.png")


def test_read_wide_case3_discovers_agents(paper_dir: Path, apple_task):
    rs = read_records(paper_dir / "case3_trust_rag.csv", task=apple_task)
    assert rs.agents == ["qwen_initial", "gpt_initial", "qwen", "gpt", "orchestrator", "rag"]
    rag = rs.for_agent("rag")
    assert len(rag) == 160
    assert all(abs(sum(r.scores.values()) - 1) < 1e-9 for r in rag)
    acc = np.mean([r.pred == r.truth for r in rag])
    assert acc == pytest.approx(154 / 160)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "file is empty"),
        ("id,label,a_pred,a_conf\n1,rust,rust,0.5\n", "missing truth column 'category'"),
        (
            "id,category,a_pred,a_conf\n1,rust,rust,high\n",
            ":2: column 'a_conf': cannot parse confidence 'high'",
        ),
        (
            "id,category,a_pred,a_conf\n1,rust,rust,1.2\n",
            ":2: column 'a_conf': confidence 1.2 outside",
        ),
        (
            "id,category,a_pred,a_conf\n1,mildew,rust,0.5\n",
            ":2: column 'category': true label 'mildew'",
        ),
        ("id,category\n1,rust\n", "no agent columns"),
    ],
)
def test_bad_wide_input_names_file_line_column(tmp_path, apple_task, content, message):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(InputError) as e:
        read_records(f, task=apple_task)
    assert message in str(e.value)
    assert str(f) in str(e.value)


def test_pred_outside_labels_is_counted_not_fatal(tmp_path, apple_task):
    f = tmp_path / "w.csv"
    f.write_text("id,category,a_pred,a_conf\n1,rust,rust,0.9\n2,scab,mildew,0.8\n3,scab,,\n")
    rs = read_records(f, task=apple_task)
    assert rs.invalid_predictions == {"a": 2}
    assert [r.pred for r in rs.records] == ["rust", None, None]


def test_label_only_agents_are_read_not_dropped(tmp_path, apple_task):
    wide = tmp_path / "w.csv"
    wide.write_text(
        "id,category,a_pred,a_conf,b_pred\n1,rust,rust,0.9,scab\n2,scab,scab,,scab\n3,rust,,,\n"
    )
    rs = read_records(wide, task=apple_task)
    assert rs.agents == ["a", "b"]
    by = {(r.agent, r.id): (r.pred, r.confidence) for r in rs.records}
    assert by[("a", "1")] == ("rust", 0.9) and by[("a", "2")] == ("scab", 1.0)
    assert by[("b", "1")] == ("scab", 1.0) and by[("b", "3")] == (None, 0.0)
    assert "a: 1 answer(s) without a confidence, read as labels only (confidence 1)" in rs.notes
    assert "b: 2 answer(s) without a confidence, read as labels only (confidence 1)" in rs.notes
    long = tmp_path / "l.csv"
    long.write_text("id,agent,truth,pred\n1,a,rust,rust\n1,b,rust,scab\n")
    rs = read_records(long, task=apple_task)
    assert [(r.agent, r.pred, r.confidence) for r in rs.records] == [
        ("a", "rust", 1.0),
        ("b", "scab", 1.0),
    ]


def test_read_long_jsonl(tmp_path, apple_task):
    f = tmp_path / "l.jsonl"
    rows = [
        {
            "id": "1",
            "agent": "clip",
            "truth": "rust",
            "pred": "rust",
            "confidence": 0.7,
            "scores": {"rust": 0.7, "scab": 0.3},
        },
        {"id": "1", "agent": "gpt", "truth": "rust", "pred": "Scab", "confidence": 0.9},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rs = read_records(f, task=apple_task)
    assert rs.agents == ["clip", "gpt"]
    assert rs.for_agent("gpt")[0].pred == "scab"
    assert rs.for_agent("clip")[0].scores == {
        "black-rot": 0.0,
        "healthy": 0.0,
        "rust": 0.7,
        "scab": 0.3,
    }
    f.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(InputError, match=r":2: duplicate row"):
        read_records(f, task=apple_task)


def test_read_decisions_jsonl_names_second_looks(tmp_path, apple_task):
    def pred(agent, label, conf, rnd):
        return Prediction(agent=agent, label=label, confidence=conf, round=rnd).to_dict()

    lines = [
        {
            "image": "a.png",
            "sha256": "a" * 64,
            "truth": "rust",
            "predictions": [pred("gpt", "scab", 0.9, 0), pred("gpt", "rust", 0.8, 1)],
        },
        {
            "image": "b.png",
            "sha256": "b" * 64,
            "truth": None,
            "predictions": [pred("gpt", "scab", 0.9, 0)],
        },
    ]
    f = tmp_path / "out.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rs = read_records(f, task=apple_task)
    assert rs.agents == ["gpt", "gpt@reeval"]
    assert [(r.agent, r.pred, r.truth) for r in rs.records] == [
        ("gpt", "scab", "rust"),
        ("gpt@reeval", "rust", "rust"),
    ]
    assert "1 decision(s) without a true label left out" in rs.notes


def _decision(sha: str, truth: str | None, predictions, task: str = "apple-leaf") -> dict:
    return {
        "image": f"{sha}.png",
        "sha256": sha * 64,
        "task": task,
        "truth": truth,
        "predictions": predictions,
    }


def test_decisions_keep_only_the_last_second_look(tmp_path, apple_task):
    def pred(label, conf, rnd):
        return Prediction(agent="gpt", label=label, confidence=conf, round=rnd).to_dict()

    lines = [
        _decision("a", "rust", [pred("scab", 0.9, 0), pred("scab", 0.7, 1), pred("rust", 0.8, 2)]),
        _decision("b", "scab", [pred("scab", 0.6, 0), pred("rust", 0.5, 1)]),
    ]
    f = tmp_path / "run.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rs = read_records(f, task=apple_task)
    assert [(r.id[0], r.agent, r.pred, r.confidence) for r in rs.records] == [
        ("a", "gpt", "scab", 0.9),
        ("a", "gpt@reeval", "rust", 0.8),
        ("b", "gpt", "scab", 0.6),
        ("b", "gpt@reeval", "rust", 0.5),
    ]


def test_non_utf8_file_is_input_error(tmp_path):
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"id,category\n\xff\xfe\x00\x81\n")
    with pytest.raises(InputError, match=r"bin\.csv: not a UTF-8 text file \(byte 0xff"):
        read_records(binary)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, x=np.arange(3))
    with pytest.raises(InputError, match=r"arrays\.npz: not a UTF-8 text file"):
        read_records(npz)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "l.jsonl",
            '{"id": "1", "agent": "a", "truth": "rust", "pred": "rust", "confidence": 0.5, '
            '"round": "x"}\n',
            r"l\.jsonl:1: column 'round': round must be a whole number >= 0, got 'x'",
        ),
        (
            "l.jsonl",
            '{"id": "1", "agent": "a", "truth": "rust", "pred": "rust", "confidence": 0.5, '
            '"round": 1.5}\n',
            r"l\.jsonl:1: column 'round': round must be a whole number >= 0, got 1\.5",
        ),
        (
            "l.csv",
            "id,agent,truth,pred,confidence,round\n1,a,rust,rust,0.5,-1\n",
            r"l\.csv:2: column 'round': round must be a whole number >= 0, got '-1'",
        ),
        (
            "d.jsonl",
            '{"sha256": "a", "truth": "rust", "predictions": "oops"}\n',
            r"d\.jsonl:1: column 'predictions': must be a list of predictions",
        ),
        (
            "d.jsonl",
            '{"sha256": "a", "truth": "rust", "predictions": [7]}\n',
            r"d\.jsonl:1: column 'predictions\[0\]': must be a prediction object",
        ),
        (
            "d.jsonl",
            '{"sha256": "a", "truth": "rust", "predictions": [{"agent": "a", "label": "rust", '
            '"confidence": 0.5, "round": 0}, {"agent": "a", "round": "x"}]}\n',
            r"d\.jsonl:1: column 'predictions\[1\]\.round': round must be a whole number",
        ),
        (
            "d.jsonl",
            '{"sha256": "a", "truth": "rust", "predictions": [{"agent": "a", "round": 1.5}]}\n',
            r"d\.jsonl:1: column 'predictions\[0\]\.round': round must be a whole number",
        ),
    ],
)
def test_malformed_round_and_predictions_name_file_line_field(
    tmp_path, apple_task, name, content, message
):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(InputError, match=message):
        read_records(f, task=apple_task)


def test_long_round_accepts_whole_numbers(tmp_path, apple_task):
    f = tmp_path / "l.csv"
    f.write_text("id,agent,truth,pred,confidence,round\n1,a,rust,rust,0.5,\n1,a,rust,scab,0.4,2\n")
    assert [r.round for r in read_records(f, task=apple_task).records] == [0, 2]


def test_decisions_without_task_use_the_named_preset(tmp_path, apple_task):
    scores = {"rust": 0.6, "healthy": 0.3, "scab": 0.1}
    p = Prediction(agent="clip", label="rust", confidence=0.6, scores=scores).to_dict()
    f = tmp_path / "run.jsonl"
    f.write_text(json.dumps(_decision("a", "Rust", [p])) + "\n")
    rs = read_records(f)
    assert rs.labels == apple_task.labels
    assert rs.records[0].truth == "rust" and rs.records[0].scores["healthy"] == pytest.approx(0.3)
    assert "labels of task 'apple-leaf' named in the decisions" in rs.notes
    f.write_text(json.dumps(_decision("a", "rust", [p], task="my-leaves")) + "\n")
    rs = read_records(f)
    assert rs.labels == ("healthy", "rust", "scab")
    assert rs.records[0].scores == pytest.approx({"healthy": 0.3, "rust": 0.6, "scab": 0.1})


def test_decisions_evidence_vote_is_a_retrieval_first_look(tmp_path, apple_task):
    vote = {"black-rot": 0.1, "healthy": 0.0, "rust": 0.7, "scab": 0.2}
    gpt = Prediction(agent="gpt", label="scab", confidence=0.9).to_dict()
    own = Prediction(agent="retrieval", label="scab", confidence=0.6).to_dict()
    lines = [
        {"sha256": "a" * 64, "truth": "rust", "predictions": [gpt], "evidence": {"vote": vote}},
        {
            "sha256": "b" * 64,
            "truth": "rust",
            "predictions": [gpt, own],
            "evidence": {"vote": vote},
        },
        {"sha256": "c" * 64, "truth": "rust", "predictions": [gpt], "evidence": None},
    ]
    f = tmp_path / "out.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rs = read_records(f, task=apple_task)
    retrieval = rs.for_agent("retrieval")
    assert [(r.id[0], r.pred, r.confidence) for r in retrieval] == [
        ("a", "rust", 0.7),
        ("b", "scab", 0.6),
    ]
    assert retrieval[0].scores == vote


def test_decisions_evidence_vote_goes_by_the_retrievers_name(tmp_path, apple_task):
    vote = {"black-rot": 0.1, "healthy": 0.0, "rust": 0.7, "scab": 0.2}
    gpt = Prediction(agent="gpt", label="scab", confidence=0.9).to_dict()
    evidence = {"vote": vote, "retriever": "rag"}
    line = {"sha256": "a" * 64, "truth": "rust", "predictions": [gpt], "evidence": evidence}
    f = tmp_path / "out.jsonl"
    f.write_text(json.dumps(line) + "\n")
    rs = read_records(f, task=apple_task)
    assert rs.agents == ["gpt", "rag"]
    assert [(r.pred, r.scores) for r in rs.for_agent("rag")] == [("rust", vote)]
