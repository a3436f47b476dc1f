"""The one JSON reader: depth and size limits, one-line errors naming the source."""

from __future__ import annotations

import json
import os

import pytest

from core.errors import InputError
from core.jsonio import nesting_depth, parse_json, read_json_file, read_text_file
from core.tables import read_rows
from core.task import load_task
from eval.profile_io import load_trust_profiles
from eval.recorded.fields import parse_scores


def test_nesting_depth_ignores_brackets_inside_strings():
    assert nesting_depth('{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert nesting_depth('"[\\"]"') == 0
    assert nesting_depth("[]") == 1


def test_parse_json_refuses_deep_nesting_before_parsing():
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InputError, match=r"x\.json:3: invalid JSON \(nested deeper than 64"):
        parse_json(deep, source="x.json", line=3)
    assert parse_json("[" * 64 + "]" * 64, source="x.json") == json.loads("[" * 64 + "]" * 64)


def test_parse_json_names_source_line_and_field():
    with pytest.raises(InputError) as info:
        parse_json("{bad", source="r.csv", line=7, field="rag_scores_json", what="scores JSON")
    assert str(info.value).startswith("r.csv:7: column 'rag_scores_json': invalid scores JSON (")


def test_read_text_file_checks_kind_and_size_before_reading(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    with pytest.raises(InputError, match="2048 bytes, over the cap of 1024"):
        read_text_file(big, what="trust file", max_bytes=1024)
    with pytest.raises(InputError, match="not a regular file"):
        read_text_file(tmp_path, what="trust file")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_json_file(fifo, what="trust file")
    with pytest.raises(InputError, match="no such trust file"):
        read_text_file(tmp_path / "missing.json", what="trust file")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        read_json_file(latin, what="trust file")


@pytest.mark.parametrize("reader", ["profiles", "task", "jsonl", "scores"])
def test_every_json_input_refuses_deep_nesting_in_one_line(tmp_path, reader):
    deep = "[" * 50_000 + "]" * 50_000
    path = tmp_path / ("in.jsonl" if reader == "jsonl" else "in.json")
    path.write_text(deep + "\n")
    with pytest.raises(InputError, match="nested deeper than") as info:
        if reader == "profiles":
            load_trust_profiles(path)
        elif reader == "task":
            load_task(path)
        elif reader == "jsonl":
            _, rows = read_rows(path)
            list(rows)
        else:
            parse_scores(deep, ["a", "b"], path="r.csv", line=2, column="x_scores_json")
    assert "\n" not in str(info.value)


def test_resume_output_policy_file_and_reply_refuse_deep_nesting(tmp_path):
    from agents.openai_compat.errors import ReplyFormatError
    from agents.openai_compat.json_text import extract_json_object
    from orchestrator.policies.trust_fit import load_trust_policy_settings
    from orchestrator.runner import read_output

    deep = "[" * 50_000 + "]" * 50_000
    out = tmp_path / "out.jsonl"
    out.write_text('{"sha256": "a"}\n' + deep + "\n")
    with pytest.raises(InputError, match=r"out\.jsonl:2: invalid JSON line \(nested deeper"):
        read_output(out, repair=False)
    out.write_bytes(b'{"sha256": "\xff"}\n')
    with pytest.raises(InputError, match=r"out\.jsonl:1: not a UTF-8 line"):
        read_output(out, repair=False)
    policy = tmp_path / "policy.json"
    policy.write_text(deep)
    with pytest.raises(InputError, match=r"policy\.json: invalid JSON \(nested deeper"):
        load_trust_policy_settings(policy)
    with pytest.raises(ReplyFormatError, match="deeper than 64 levels"):
        extract_json_object('{"label": ' + deep + "}")
