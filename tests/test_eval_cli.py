"""``trustorch eval calibration`` and ``trustorch eval trust`` through the real CLI root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.profile import load_trust_profiles
from orchestrator.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_calibration_table_on_case1(paper_dir: Path, capsys):
    code, out, err = run(capsys, "eval", "calibration", str(paper_dir / "case1_zero_shot.csv"))
    assert code == 0, err
    assert "case1_zero_shot.csv: 160 images" in out
    header = next(line for line in out.splitlines() if "metric" in line)
    assert header.index("qwen") < header.index("gpt") < header.index("orchestrator")
    accuracy = next(line for line in out.splitlines() if line.startswith("│ accuracy"))
    assert "0.450" in accuracy and "0.569" in accuracy and "0.481" in accuracy
    assert "ECE (10 bins)" in out and "OCR (conf > 0.5)" in out
    assert "qwen confusion" in out


def test_calibration_json_keys_and_values(paper_dir: Path, capsys, tmp_path):
    code, out, err = run(
        capsys,
        "eval",
        "calibration",
        str(paper_dir / "case3_trust_rag.csv"),
        "--task",
        "apple-leaf",
        "--agents",
        "gpt,rag",
        "--bins",
        "15",
        "--ocr-threshold",
        "0.9",
        "--json",
        "--bootstrap",
        "100",
        "--plots",
        str(tmp_path / "plots"),
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["bins"] == 15 and data["ocr_threshold"] == 0.9
    assert data["notes"] == [] and data["invalid_predictions"] == {}
    assert list(data["agents"]) == ["gpt", "rag"]
    rag = data["agents"]["rag"]
    for key in (
        "n",
        "accuracy",
        "macro_f1",
        "ece",
        "mce",
        "ocr",
        "ccc",
        "ccc_pvalue",
        "brier",
        "mean_confidence",
        "mean_confidence_correct",
        "mean_confidence_wrong",
        "per_class_recall",
        "confusion",
        "intervals",
        "recalibrated",
    ):
        assert key in rag, key
    assert set(rag["intervals"]) == {"accuracy", "ece", "ccc"}
    assert rag["n"] == 160 and rag["accuracy"] == pytest.approx(154 / 160)
    assert rag["ece_bins"] == 15 and rag["recalibration_method"] == "temperature"
    lo, hi = rag["intervals"]["accuracy"]
    assert lo < rag["accuracy"] < hi
    pngs = sorted(Path(p).name for p in data["plots"])
    assert pngs == [
        "gpt_confidence.png",
        "gpt_reliability.png",
        "rag_confidence.png",
        "rag_reliability.png",
    ]
    for p in data["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_invalid_predictions_are_counted_and_noted(tmp_path, capsys):
    f = tmp_path / "long.jsonl"
    rows = [
        {"id": "1", "agent": "a", "truth": "cat", "pred": "cat", "confidence": 0.9},
        {"id": "2", "agent": "a", "truth": "dog", "pred": "wolf", "confidence": 0.8},
        {"id": "3", "agent": "a", "truth": "dog", "pred": "dog", "confidence": 0.6},
        {"id": "4", "agent": "a", "truth": "cat", "pred": "dog", "confidence": 0.7},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, err = run(capsys, "eval", "calibration", str(f), "--json", "--bootstrap", "0")
    assert code == 0, err
    data = json.loads(out)
    assert data["labels"] == ["cat", "dog"]
    assert data["invalid_predictions"] == {"a": 1}
    assert "a: 1 prediction(s)" in data["notes"][0]
    a = data["agents"]["a"]
    assert a["n_invalid"] == 1 and a["confusion"] == [[1, 1, 0], [0, 1, 1]]
    assert a["accuracy"] == 0.5 and a["intervals"] == {}


def test_later_rounds_of_a_long_file_are_measured_apart(tmp_path, capsys):
    f = tmp_path / "long.csv"
    rows = ["id,agent,truth,pred,confidence,round"]
    for i, (truth, first, second) in enumerate([("cat", "dog", "cat"), ("dog", "dog", "dog")] * 3):
        rows += [f"{i},a,{truth},{first},0.6,0", f"{i},a,{truth},{second},0.9,1"]
    f.write_text("\n".join(rows) + "\n")
    code, out, err = run(capsys, "eval", "calibration", str(f), "--json", "--bootstrap", "0")
    assert code == 0, err
    agents = json.loads(out)["agents"]
    assert set(agents) == {"a", "a@reeval"}
    assert agents["a"]["n"] == agents["a@reeval"]["n"] == 6
    assert agents["a"]["accuracy"] == 0.5 and agents["a@reeval"]["accuracy"] == 1.0


def test_trust_writes_loadable_profiles(paper_dir: Path, tmp_path, capsys):
    out_file = tmp_path / "profiles.json"
    code, out, err = run(
        capsys,
        "eval",
        "trust",
        str(paper_dir / "case1_zero_shot.csv"),
        "--out",
        str(out_file),
        "--bootstrap",
        "50",
    )
    assert code == 0, err
    assert f"wrote 3 profile(s) to {out_file}" in out.replace("\n", "")
    profiles = load_trust_profiles(out_file)
    assert sorted(profiles) == ["gpt", "orchestrator", "qwen"]
    assert profiles["gpt"].accuracy == 91 / 160


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        ("", [], "file is empty"),
        ("id,category,a_pred,a_conf\n1,rust,rust,high\n", [], ":2: column 'a_conf': cannot parse"),
        ("id,category,a_pred,a_conf\n1,rust,rust,1.5\n", [], "confidence 1.5 outside [0, 1]"),
        ("id,label,a_pred,a_conf\n1,rust,rust,0.5\n", [], "missing truth column 'category'"),
        (
            "id,category,a_pred,a_conf,a_pred\n1,rust,rust,0.5,scab\n",
            [],
            "bad.csv:1: the header names column(s) 'a_pred' more than once",
        ),
        (
            "id,category,a_pred,a_conf\n1,mildew,rust,0.5\n",
            ["--task", "apple-leaf"],
            ":2: column 'category': true label 'mildew'",
        ),
        ("id,category,a_pred,a_conf\n1,rust,rust,0.5\n", [], "only one label ['rust']"),
        ("id,category,a_pred,a_conf\n1,rust,rust,0.5\n", ["--agents", "b"], "agents ['b'] not"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys, content, argv, message):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    for command in (["calibration", str(f)], ["trust", str(f), "--out", str(tmp_path / "o")]):
        code, out, err = run(capsys, "eval", *command, *argv)
        assert code == 1
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert message in lines[0]
    assert not (tmp_path / "o").exists()


def test_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "calibration", str(tmp_path / "nope.csv"))
    assert code == 1 and err.strip() == f"error: {tmp_path / 'nope.csv'}: no such file"


def test_agent_without_valid_predictions_prints_dashes(tmp_path, capsys):
    f = tmp_path / "long.jsonl"
    rows = [
        {"id": str(i), "agent": agent, "truth": truth, "pred": pred, "confidence": 0.9}
        for i, truth in enumerate(["cat", "dog"] * 5)
        for agent, pred in (("good", truth), ("mute", ""))
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, err = run(capsys, "eval", "calibration", str(f), "--bootstrap", "20")
    assert code == 0, err
    ece = next(line for line in out.splitlines() if line.startswith("│ ECE"))
    assert [c.strip() for c in ece.split("│")[2:4]] == ["0.100", "-"]
    brier = next(line for line in out.splitlines() if line.startswith("│ Brier"))
    assert brier.split("│")[3].strip() == "-"
    code, out, err = run(capsys, "eval", "trust", str(f), "--out", str(tmp_path / "p.json"))
    assert code == 0, err
    mute = next(line for line in out.splitlines() if line.startswith("│ mute"))
    assert [c.strip() for c in mute.split("│")[2:5]] == ["10", "0.000", "-"]
    assert load_trust_profiles(tmp_path / "p.json")["mute"].ece is None


def test_decisions_of_a_three_round_run_fit_without_task(tmp_path, capsys):
    def pred(label, conf, rnd):
        scores = {"rust": conf, "healthy": (1 - conf) / 2, "scab": (1 - conf) / 2}
        if label == "scab":
            scores = {"scab": conf, "healthy": (1 - conf) / 2, "rust": (1 - conf) / 2}
        return {"agent": "gpt", "label": label, "confidence": conf, "scores": scores, "round": rnd}

    lines = [
        {
            "image": f"{i}.png",
            "sha256": f"{i:064x}",
            "task": "apple-leaf",
            "truth": truth,
            "predictions": [pred(truth, 0.6, 0), pred("scab", 0.55, 1), pred(truth, 0.8, 2)],
        }
        for i, truth in enumerate(["rust", "scab"] * 4)
    ]
    f = tmp_path / "c1.jsonl"
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out_file = tmp_path / "p.json"
    argv = ["--out", str(out_file), "--json", "--bootstrap", "0", "--folds", "2"]
    code, out, err = run(capsys, "eval", "trust", str(f), *argv)
    assert code == 0, err
    summary = json.loads(out)["agents"]
    assert sorted(summary) == ["gpt", "gpt@reeval"]
    assert summary["gpt"]["n"] == summary["gpt@reeval"]["n"] == 8
    assert summary["gpt@reeval"]["accuracy"] == 1.0
    profiles = load_trust_profiles(out_file)
    assert profiles["gpt"].labels == ("black-rot", "healthy", "rust", "scab")


def test_binary_input_is_one_line(tmp_path, capsys):
    import numpy as np

    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(128, 256)))
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.arange(3))
    for f in (binary, npz):
        for command in (["calibration", str(f)], ["trust", str(f), "--out", str(tmp_path / "o")]):
            code, out, err = run(capsys, "eval", *command)
            assert (code, out) == (1, "")
            assert err.startswith(f"error: {f}: not a UTF-8 text file (byte 0x")
            assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--seed", "-1"], 2, "error: Invalid value for '--seed'"),
        (["--folds", "1"], 2, "error: Invalid value for '--folds': must be 0 (none) or at least 2"),
        (["--bootstrap", "-1"], 2, "error: Invalid value for '--bootstrap': must be at least 0"),
        (["--bins", "-3"], 2, "error: Invalid value for '--bins': must be at least 1, got -3"),
        (["--method", "platt"], 2, "error: Invalid value for '--method': 'platt' is not one of"),
        (["--ocr-threshold", "nan"], 2, "error: Invalid value for '--ocr-threshold': must be"),
        (["--agents", " , "], 2, "error: Invalid value for '--agents': names no agent"),
    ],
)
def test_bad_numeric_options_are_one_line(tmp_path, capsys, argv, code, message):
    f = tmp_path / "w.csv"
    f.write_text("id,category,a_pred,a_conf\n1,rust,rust,0.5\n2,scab,rust,0.7\n")
    for command in (["calibration", str(f)], ["trust", str(f), "--out", str(tmp_path / "o")]):
        got, out, err = run(capsys, "eval", *command, *argv)
        assert (got, out) == (code, "")
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "o").exists()


def test_trust_warns_about_a_profile_measured_on_few_answers(tmp_path, capsys):
    labels = ["black-rot", "healthy", "rust", "scab"]
    rows = ["id,agent,truth,pred,confidence"]  # long format: 'a' answered 7 images, 'b' 40
    for i in range(40):
        truth = labels[i % 4]
        rows.append(f"{i},b,{truth},{truth},0.8")
        if i < 7:
            rows.append(f"{i},a,{truth},{truth if i % 3 else labels[(i + 1) % 4]},0.9")
    data = tmp_path / "small.csv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "trust.json"
    args = ["eval", "trust", str(data), "--task", "apple-leaf", "--out", str(out)]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "'a' is measured on 7 answers only (accuracy 0.571, 95% interval [" in warnings[0]
    code, printed, _ = run(capsys, *args, "--json")
    assert json.loads(printed)["warnings"] == [warnings[0].removeprefix("warning: ")]
