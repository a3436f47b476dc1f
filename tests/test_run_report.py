"""``trustorch eval report``: the HTML picture of a real run's decisions file.

The decisions come from ``trustorch run`` itself, on generated images, with two FAKE agents
(``ReportAgent``: a real ``Agent`` implementation, loaded through the ``py:`` spec, that answers
from the image's folder and file name instead of looking at it) and trust profiles fitted by
``trustorch eval trust`` on a recorded CSV. The file names script the run: ``wrong`` answers a
wrong label, ``fixed`` is wrong at first and right on the second look, ``broken`` makes the
fragile agent raise (``broken_all`` makes both raise: an abstention), ``script`` puts markup in
the agent's reason. Every figure of the page is checked against the same file read here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from offline_browser import browser_missing, offline_chrome
from PIL import Image

from agents.types import Prediction
from orchestrator.cli import main

HERE = Path(__file__).resolve()
MARKUP = "<script>alert('pwned')</script>"
IMAGE_MARKUP = "<b onclick=alert(1)>"
IMAGES = {
    "rust": ["ok_1", "ok_2", "wrong_1", "unsure_1", f"script_wrong_{IMAGE_MARKUP}"],
    "healthy": ["ok_1", "fixed_1", "broken_1", "broken_all_1"],
    "scab": ["ok_1", "ok_2"],
}


class ReportAgent:
    """FAKE agent scripted by the image's name (see the module docstring)."""

    def __init__(self, name: str, cost_usd: float, latency_s: float, fragile: bool) -> None:
        self.name = name
        self.can_reevaluate = True
        self.cost_usd = cost_usd
        self.latency_s = latency_s
        self.fragile = fragile

    async def predict(self, image, task, *, round=0, previous=None, evidence=None):  # type: ignore[no-untyped-def]
        stem = Path(image.source).stem
        truth = task.normalise_label(Path(image.source).parent.name)
        other = next(y for y in task.labels if y != truth)
        if "broken" in stem and (self.fragile or "all" in stem):
            raise RuntimeError("model server unreachable")
        label = other if "wrong" in stem or ("fixed" in stem and round == 0) else truth
        confidence = 0.3 if "unsure" in stem else 0.6 if label != truth else 0.9
        reason = f"{MARKUP} {self.name}" if "script" in stem else f"{self.name} sees {label}"
        return Prediction(
            agent=self.name,
            label=label,
            confidence=confidence,
            reason=reason,
            round=round,
            latency_s=self.latency_s * (1 + round),
            cost_usd=self.cost_usd,
        )


def make_report_agent(
    name: str = "a", cost: str = "0", latency: str = "0.1", fragile: str = "0"
) -> ReportAgent:
    return ReportAgent(name, float(cost), float(latency), fragile == "1")


def agent_spec(name: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"name": name, **params}.items())
    return f"{name}=py:{HERE}:make_report_agent?{query}"


def make_images(root: Path) -> Path:
    for i, (label, names) in enumerate(IMAGES.items()):
        for j, name in enumerate(names):
            path = root / label / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.new("RGB", (16, 16), (60 * i, 90, 20 * j))
            img.putpixel((j, i), (30 * j, 50 * i, 7))
            img.save(path)
    return root


def recorded_answers(path: Path) -> Path:
    """Both agents right 9 times in 10 at confidence 0.9: what the trust profiles learn."""
    labels = ["black-rot", "healthy", "rust", "scab"]
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["id", "agent", "truth", "pred", "confidence"])
        for agent in ("a", "b"):
            for i in range(40):
                truth = labels[i % 4]
                out.writerow([f"img{i}", agent, truth, truth if i % 10 else labels[0], 0.9])
    return path


def cli(*argv: str) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(list(argv))
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> tuple[Path, dict]:
    """A real ``trustorch run`` over the scripted images: its decisions file and its summary."""
    root = tmp_path_factory.mktemp("run-report")
    trust = root / "trust.json"
    code, _ = cli(
        "eval", "trust", str(recorded_answers(root / "recorded.csv")), "--task", "apple-leaf",
        "--bootstrap", "0", "--folds", "0", "--out", str(trust),
    )  # fmt: skip
    assert code == 0
    out = root / "results.jsonl"
    code, summary = cli(
        "run", str(make_images(root / "data")), "--trust", str(trust), "-o", str(out), "--json",
        "-a", agent_spec("a", cost="0.002", latency="0.3", fragile="1"),
        "-a", agent_spec("b", latency="0.1"),
    )  # fmt: skip
    assert code == 0
    return out, json.loads(summary)


def decisions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Page(HTMLParser):
    """Every element's tag and attributes, and the page's text, from the HTML itself."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):  # type: ignore[no-untyped-def]
        self.text.append(data)

    def by_id(self, element_id: str) -> dict[str, str]:
        found = [a for _, a in self.elements if a.get("id") == element_id]
        assert len(found) == 1, f"{len(found)} elements with id {element_id}"
        return found[0]

    def has_id(self, element_id: str) -> bool:
        return any(a.get("id") == element_id for _, a in self.elements)

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if name in a.get("class", "").split()]


def report(tmp_path: Path, results: Path, *extra: str) -> tuple[Page, str, dict]:
    out = tmp_path / "report.html"
    code, printed = cli("eval", "report", str(results), "-o", str(out), "--json", *extra)
    assert code == 0
    text = out.read_text(encoding="utf-8")
    return Page(text), text, json.loads(printed)


@pytest.fixture(scope="module")
def page(run_file, tmp_path_factory) -> tuple[Page, str, dict]:
    return report(tmp_path_factory.mktemp("page"), run_file[0])


def test_headline_equals_the_figures_of_the_file(run_file, page):
    from eval.metrics import brier_top_label, expected_calibration_error

    path, summary = run_file
    rows = decisions(path)
    answered = [d for d in rows if d["label"] is not None]
    correct = [d["label"] == d["truth"] for d in answered]
    headline = page[0].by_id("headline")
    assert int(headline["data-images"]) == len(rows) == 11
    assert int(headline["data-answered"]) == len(answered) == 10
    assert float(headline["data-coverage"]) == pytest.approx(10 / 11)
    assert int(headline["data-abstained"]) == 1 == summary["abstained"]
    assert float(headline["data-accuracy"]) == pytest.approx(sum(correct) / len(answered)) == 0.8
    assert float(headline["data-accuracy-all"]) == pytest.approx(summary["accuracy_all"])
    assert float(headline["data-accuracy"]) == pytest.approx(summary["accuracy"])
    conf = [d["confidence"] for d in answered]
    assert float(headline["data-ece"]) == pytest.approx(expected_calibration_error(conf, correct))
    assert float(headline["data-brier"]) == pytest.approx(brier_top_label(conf, correct))
    failed = [d for d in rows if any(p["label"] is None for p in d["predictions"])]
    assert int(headline["data-failed-images"]) == len(failed) == 2
    assert int(headline["data-agent-failures"]) == summary["agent_failures"] == 4
    assert float(headline["data-reeval-rate"]) == pytest.approx(summary["reeval_rate"])
    assert float(headline["data-cost-usd"]) == pytest.approx(summary["cost_usd"])
    assert page[2]["accuracy"] == pytest.approx(0.8) and page[2]["images"] == 11


def test_confusion_matrix_and_reliability_bins_count_the_decisions(run_file, page):
    from eval.metrics import reliability_bins

    rows = decisions(run_file[0])
    expected = Counter((d["truth"], d["label"] or "") for d in rows)
    cells = page[0].with_class("cell")
    shown = {(c["data-truth"], c["data-pred"]): int(c["data-count"]) for c in cells}
    assert {k: v for k, v in shown.items() if v} == dict(expected)
    assert shown[("healthy", "")] == 1 and shown[("rust", "black-rot")] == 2
    assert {pred for _, pred in shown} == {"black-rot", "healthy", "rust", "scab", ""}

    answered = [d for d in rows if d["label"] is not None]
    bins = reliability_bins(
        [d["confidence"] for d in answered], [d["label"] == d["truth"] for d in answered]
    )
    drawn = sorted(page[0].with_class("bin"), key=lambda b: int(b["data-bin"]))
    assert [int(b["data-count"]) for b in drawn] == list(bins.counts)
    for b, acc in zip(drawn, bins.accuracy, strict=True):
        assert ("data-accuracy" in b) == (not np.isnan(acc))
        if "data-accuracy" in b:
            assert float(b["data-accuracy"]) == pytest.approx(acc)


def test_agents_table_counts_calls_failures_cost_and_latency(run_file, page):
    rows = decisions(run_file[0])
    shown = {r["data-agent"]: r for r in page[0].with_class("agent")}
    assert sorted(shown) == ["a", "b"]
    for name, row in shown.items():
        calls = [p for d in rows for p in d["predictions"] if p["agent"] == name]
        latency = [p["latency_s"] for p in calls]
        assert int(row["data-calls"]) == len(calls)
        assert int(row["data-second-looks"]) == sum(p["round"] > 0 for p in calls)
        assert int(row["data-failures"]) == sum(p["label"] is None for p in calls)
        assert float(row["data-cost-usd"]) == pytest.approx(sum(p["cost_usd"] for p in calls))
        assert float(row["data-latency-mean"]) == pytest.approx(np.mean(latency))
        assert float(row["data-latency-p50"]) == pytest.approx(np.percentile(latency, 50))
        assert float(row["data-latency-p95"]) == pytest.approx(np.percentile(latency, 95))
    assert int(shown["a"]["data-failures"]) == 3 and int(shown["b"]["data-failures"]) == 1
    assert float(shown["a"]["data-cost-usd"]) == pytest.approx(0.002 * 18)


def test_reevaluation_says_what_it_changed(run_file, page):
    rows = decisions(run_file[0])
    section = page[0].by_id("reevaluation")
    assert int(section["data-reevaluated"]) == sum(d["rounds_used"] > 1 for d in rows)
    assert int(section["data-changed"]) == 1 and int(section["data-fixed"]) == 1
    assert int(section["data-broke"]) == 0


def test_abstention_error_and_failure_rows_link_to_their_traces(run_file, page):
    parsed, text, _ = page
    lines = {n: d for n, d in enumerate(run_file[0].read_text().splitlines(), start=1)}
    by_line = {n: json.loads(x) for n, x in lines.items()}
    links = [a["href"] for tag, a in parsed.elements if tag == "a" and "href" in a]
    assert links and all(parsed.has_id(h[1:]) for h in links if h.startswith("#"))
    expected = {
        "abstentions": {n for n, d in by_line.items() if d["label"] is None},
        "wrong": {n for n, d in by_line.items() if d["label"] not in (None, d["truth"])},
        "failures": {
            n for n, d in by_line.items() if any(p["label"] is None for p in d["predictions"])
        },
    }
    assert [len(v) for v in expected.values()] == [1, 2, 2]
    for section, wanted in expected.items():
        assert int(parsed.by_id(section)["data-total"]) == len(wanted)
        for n in wanted:
            assert f'href="#trace-L{n}"' in text
            trace = parsed.by_id(f"trace-L{n}")
            assert int(trace["data-line"]) == n
    traces = parsed.with_class("trace")
    assert {int(t["data-line"]) for t in traces} == set().union(*expected.values())
    answers = [a for a in parsed.with_class("prediction")]
    assert len(answers) == sum(len(by_line[int(t["data-line"])]["predictions"]) for t in traces)


def test_untrusted_text_is_escaped(page):
    parsed, text, _ = page
    assert "<script" not in text and IMAGE_MARKUP not in text
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in text
    assert "&lt;b onclick=alert(1)&gt;" in text
    assert not [a for _, a in parsed.elements if any(k.startswith("on") for k in a)]
    assert "src=" not in text and "http" not in text.replace("http://www.w3.org/2000/svg", "")


def test_an_unlabelled_run_keeps_everything_but_accuracy(run_file, tmp_path):
    unlabelled = tmp_path / "unlabelled.jsonl"
    rows = [{**d, "truth": None} for d in decisions(run_file[0])]
    unlabelled.write_text("".join(json.dumps(d) + "\n" for d in rows))
    parsed, _, printed = report(tmp_path, unlabelled)
    headline = parsed.by_id("headline")
    assert "data-accuracy" not in headline and "data-ece" not in headline
    assert int(headline["data-images"]) == 11 and int(headline["data-abstained"]) == 1
    assert not parsed.has_id("confusion") and not parsed.has_id("reliability")
    assert int(parsed.by_id("confidences")["data-n"]) == 10
    assert sum(int(b["data-count"]) for b in parsed.with_class("bin")) == 10
    assert int(parsed.by_id("wrong")["data-total"]) == 0
    assert int(parsed.by_id("failures")["data-total"]) == 2
    assert len(parsed.with_class("agent")) == 2
    assert printed["accuracy"] is None and printed["labelled"] == 0


def test_max_rows_keeps_the_first_rows_and_says_how_many_are_left_out(run_file, tmp_path):
    parsed, text, _ = report(tmp_path, run_file[0], "--max-rows", "1")
    failures = parsed.by_id("failures")
    assert (failures["data-total"], failures["data-shown"], failures["data-left-out"]) == (
        "2",
        "1",
        "1",
    )
    assert "1 left out" in text
    rows = parsed.with_class("row")
    assert len(rows) == 3  # one per table
    traces = {t["data-line"] for t in parsed.with_class("trace")}
    assert traces == {r["data-line"] for r in rows}


@pytest.mark.parametrize(
    ("line3", "message"),
    [
        ('{"sha256": "ab", "predictions": [', ":3: invalid JSON line"),
        ('{"sha256": "ab", "predictions": [{"agent": "a", "latency_s": "slow"}]}', ":3: column "
         "'predictions[0].latency_s': latency_s must be a number, got 'slow'"),
        ('{"sha256": "ab", "predictions": [], "label": "rust", "confidence": 2}', ":3: column "
         "'confidence': confidence 2.0 outside [0, 1]"),
        ('["not", "a", "decision"]', ":3: not a decision of trustorch run"),
    ],
)  # fmt: skip
def test_a_bad_line_is_one_line_naming_file_and_line(run_file, tmp_path, capsys, line3, message):
    lines = run_file[0].read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines[:2], line3, *lines[3:]]) + "\n")
    out = tmp_path / "report.html"
    assert main(["eval", "report", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}") and message in err
    assert not out.exists() and not list(tmp_path.glob(".report.html*"))


@pytest.mark.parametrize("content", ["", "\n \n"])
def test_an_empty_file_is_a_clear_error(tmp_path, capsys, content):
    message = "no decisions in the file (it is empty)"
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content)
    assert main(["eval", "report", str(empty), "-o", str(tmp_path / "r.html")]) == 1
    assert capsys.readouterr().err == f"error: {empty}: {message}\n"


def test_a_truncated_last_line_is_ignored_and_said(run_file, tmp_path):
    text = run_file[0].read_text()
    torn = tmp_path / "torn.jsonl"
    torn.write_text(text + text.splitlines()[0][:50])
    parsed, html_text, printed = report(tmp_path, torn)
    assert int(parsed.by_id("headline")["data-images"]) == 11
    assert any("ignored a truncated last line (50 bytes)" in n for n in printed["notes"])
    assert "ignored a truncated last line" in html_text


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--max-rows", "0"], 2, "'--max-rows'"),
        (["--bins", "0"], 2, "'--bins'"),
    ],
)
def test_bad_option_values_are_usage_errors(run_file, tmp_path, capsys, argv, code, message):
    assert main(["eval", "report", str(run_file[0]), "-o", str(tmp_path / "r.html"), *argv]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_missing_file_and_folder_output_are_one_line(run_file, tmp_path, capsys):
    assert (
        main(["eval", "report", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "r.html")]) == 1
    )
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.jsonl'}: no such file\n"
    assert main(["eval", "report", str(run_file[0]), "-o", str(tmp_path)]) == 1
    assert "--out is a folder" in capsys.readouterr().err


def test_a_long_file_is_streamed_with_bounded_tables(run_file, tmp_path):
    from eval.run_report import read_run

    lines = run_file[0].read_text().splitlines()
    repeats = 300
    long = tmp_path / "long.jsonl"
    with long.open("w") as fh:
        for _ in range(repeats):
            fh.write("\n".join(lines) + "\n")
    figures = read_run(long, max_rows=100)
    assert figures.images == 11 * repeats and figures.abstained == repeats
    assert figures.accuracy == pytest.approx(0.8)
    assert figures.failures.total == 2 * repeats and len(figures.failures.rows) == 100
    assert figures.abstentions.left_out == repeats - 100
    assert len(figures.traces) <= 3 * 100
    assert figures.confusion[("healthy", None)] == repeats


def test_latency_percentiles_come_from_a_bounded_sample():
    from eval.run_report import LatencyStats

    values = np.random.default_rng(3).exponential(0.5, size=20_000)
    small, capped = LatencyStats(cap=50_000), LatencyStats(cap=2_000)
    for v in values:
        small.add(float(v))
        capped.add(float(v))
    assert small.exact and small.percentile(95) == pytest.approx(np.percentile(values, 95))
    assert not capped.exact and len(capped.sample) == 2_000
    assert capped.mean == pytest.approx(values.mean())
    assert capped.percentile(50) == pytest.approx(np.percentile(values, 50), rel=0.1)


def test_the_page_in_a_real_browser(run_file, tmp_path, monkeypatch):
    if reason := browser_missing():
        pytest.skip(reason)
    from selenium.webdriver.common.by import By

    out = tmp_path / "report.html"
    assert cli("eval", "report", str(run_file[0]), "-o", str(out))[0] == 0
    monkeypatch.setenv("SE_OFFLINE", "true")
    browser = offline_chrome(tmp_path / "chromium-profile")
    try:
        browser.get(out.as_uri())
        headline = browser.find_element(By.ID, "headline")
        assert headline.get_attribute("data-accuracy") == "0.8"
        assert "80.0%" in browser.find_element(By.ID, "stat-accuracy").text
        link = browser.find_element(By.CSS_SELECTOR, "#abstentions a[href^='#trace-L']")
        target = link.get_attribute("href").rsplit("#", 1)[1]
        link.click()
        assert browser.execute_script("return location.hash") == f"#{target}"
        shown = browser.execute_script("return document.querySelector(':target').id")
        assert shown == target
        trace = browser.find_element(By.ID, target)
        assert trace.is_displayed() and "broken_all_1.png" in trace.text
        assert "model server unreachable" in trace.text
        assert browser.execute_script("return document.scripts.length") == 0
        svg = browser.find_element(By.CSS_SELECTOR, "#reliability svg")
        assert svg.size["width"] > 100
    finally:
        browser.quit()
