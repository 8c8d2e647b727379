"""The HTML report (keras_secure.reporting): structure, the demo's page, --chapters, and a real
headless browser that renders it."""

import json
import os
import sys
import types

import numpy as np
import pytest

from keras_secure import attacks as A
from keras_secure.demo import runner
from keras_secure.evaluation import evaluate_robustness
from keras_secure.reporting import HtmlReport, markdown_to_html, plot_adversarial_examples

sys.path.insert(0, os.path.dirname(__file__))
from _browser import BROWSER, NO_BROWSER, Browser, check_in_browser, static_check  # noqa: E402

FLAGS = [
    {"flag": "black_box_beats_white_box", "fired": True, "threat_model": "Linf, eps=0.1",
     "message": "Square broke 7 examples PGD could not.", "evidence": {"broken": 7}},
    {"flag": "vanishing_gradients", "fired": False, "message": "Gradients are fine.",
     "evidence": {"examples": 40, "fraction": 0.0}},
    {"flag": "not_converged", "fired": None, "message": "Not checked here.", "evidence": {}},
]


@pytest.fixture(scope="module")
def report(cnn, eval_set):
    """A report of 40 digits that kept its examples, carrying fired, passed and unchecked
    masking flags and a warning (set by hand: the pages must show whatever a report says)."""
    x, y = eval_set
    report = evaluate_robustness(cnn, x[:40], y[:40], [
        A.FGSM(0.1, value_range=(0, 1)), A.PGD(0.1, steps=3, value_range=(0, 1), seed=0)],
        keep_adversarial=True)
    report.diagnostics = FLAGS
    report.classifier = {**report.classifier, "warnings": ["Saturated logits: be careful."]}
    return report


@pytest.fixture(scope="module")
def evaluation_page(report, tmp_path_factory):
    """The page of an evaluation."""
    page = HtmlReport("keras-secure evaluate", subtitle="cnn.keras on test.npz",
                      settings={"eps": 0.1, "attacks": ["FGSM", "PGD"]})
    page.add_robustness_report(page.section("Robustness"), report, "cnn.keras")
    path = str(tmp_path_factory.mktemp("html") / "evaluation.html")
    page.write(path, run_seconds=75.4)
    assert page.problems == []
    return path


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_evaluation_page_structure(evaluation_page, report):
    page = static_check(_read(evaluation_page))
    text = page["text"]
    # the full table, with every row of the report and its numbers as report.table prints them
    table = next(t for t in page["tables"] if t and t[0][:2] == ["Attack Type",
                                                                 "Clean Accuracy (%)"])
    assert [row[0] for row in table[1:]] == [r.attack for r in report.rows]
    for row, result in zip(table[1:], report.rows):
        assert row[2] == f"{100 * result.adversarial_accuracy:.1f}"
    # per-class rows: one per class present, clean accuracy per class as per_class() says
    per_class = next(t for t in page["tables"] if t and t[0][0] == "Class")
    expected = report.per_class()
    assert [r[0] for r in per_class[1:]] == [str(c["class"]) for c in expected]
    assert [r[2] for r in per_class[1:]] == [f"{100 * c['clean_accuracy']:.1f}" for c in expected]
    # the masking flags: every one shown, the fired one marked (badge, row, header summary)
    flags = next(t for t in page["tables"] if t and t[0][0] == "Check")
    assert [(r[0], r[2]) for r in flags[1:]] == [
        ("black_box_beats_white_box", "FIRED"), ("vanishing_gradients", "ok"),
        ("not_converged", "not checked")]
    assert page["classes"].get("fired") == 3  # the badge, the row and the header summary
    assert "masking-summary" in page["ids"] and "Gradient masking suspected: 1 flag(s)" in text
    assert "broken=7" in text and "Saturated logits: be careful." in text
    # settings, versions, run time; one grid picture of the adversarial examples
    assert "1 min 15 s" in text and "tensorflow" in text and "keras" in text
    assert '["FGSM", "PGD"]' in text
    assert len(page["images"]) == 1 and page["images"][0][0] > 400


def test_page_without_diagnostics_says_so(report, tmp_path):
    report_copy = type(report)(report.results, report.worst_cases, report.classifier)
    report_copy.diagnostics = None
    page = HtmlReport("t")
    page.add_robustness_report(page.section("R"), report_copy, "no checks")
    text = static_check(page.render())["text"]
    assert "No gradient-masking diagnostics were run" in text
    assert "The diagnostics were not run for this report" in text
    report_copy.diagnostics = []  # no indicators at all: never "no flag fired"
    page = HtmlReport("t")
    page.add_robustness_report(page.section("R"), report_copy, "empty")
    text = static_check(page.render())["text"]
    assert "No gradient-masking diagnostics were run" in text and "No gradient-masking flag" \
        not in text


def test_markdown_images_are_embedded_and_problems_shown(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "plot.png")
    problems = []
    html = markdown_to_html("| a | b |\n|---|---|\n| 1 | 2 |\n\n![p](plot.png) ![m](missing.png) "
                            "![r](https://example.org/x.png)", str(tmp_path), problems)
    assert "<table>" in html and html.count('src="data:image/png;base64,') == 1
    assert len(problems) == 2 and "missing.png" in problems[0] and "not a local" in problems[1]
    assert "[image not embedded:" in html and "example.org" not in html.split("not embedded")[0]
    page = HtmlReport("t", base_dir=str(tmp_path))
    page.add_markdown(page.section("S"), "![p](missing.png)")
    assert page.problems and "Problems" in static_check(page.render())["text"]


def test_adversarial_grid(report, tmp_path):
    fig = plot_adversarial_examples(report, num_examples=5, path=str(tmp_path / "g.png"))
    axes = fig.axes
    assert len(axes) == 15  # 3 rows x 5 columns
    worst = min(report.results, key=lambda r: r.adversarial_accuracy).attack
    assert worst in fig._suptitle.get_text()
    # fooled examples first, titled with the report's own labels and predictions
    y, clean, adv = (report.labels, report.predictions["clean"], report.predictions[worst])
    fooled = np.flatnonzero((clean == y) & (adv != y))
    first = fooled[0]
    assert axes[0].get_title() == f"y={y[first]} pred {clean[first]}"
    assert axes[5].get_title() == f"pred {adv[first]}"
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="`attack`"):
        plot_adversarial_examples(report, attack="nope")
    with pytest.raises(ValueError, match="`num_examples`"):
        plot_adversarial_examples(report, num_examples=0)
    bare = type(report)(report.results, report.worst_cases, report.classifier)
    with pytest.raises(ValueError, match="keep_adversarial=True"):
        plot_adversarial_examples(bare)


# --------------------------------------------------------------------------------------------
# The demo's page and --chapters
# --------------------------------------------------------------------------------------------
def _chapter(module_name, body):
    module = types.ModuleType(f"keras_secure.demo.{module_name}")
    sys.modules[module.__name__] = module
    body.__module__ = module.__name__
    return body


@pytest.fixture
def fake_chapters(monkeypatch, report):
    """Two fast chapters written the way real ones are (sections, plots, a robustness report)."""
    def first(ctx):
        ctx.section("Some text and a table.\n\n| x | y |\n|---|---|\n| 1 | 2 |")
        name = ctx.line_plot("one.png", [1, 2], {"a": [0.5, 0.25]}, "x", "y")
        ctx.section(f"![plot]({name})")
        ctx.robustness_report(report, "Table 1 - digits")
        ctx.results["first"] = {"value": 1.0}

    def second(ctx):
        ctx.section("Chapter two's only section.")
        ctx.results["second"] = [1, 2]

    chapters = [("The first one", _chapter("ch1_alpha", first)),
                ("The second one", _chapter("ch_beta", second))]
    monkeypatch.setattr(runner, "CHAPTERS", chapters)
    yield chapters
    for name in ("ch1_alpha", "ch_beta"):
        sys.modules.pop(f"keras_secure.demo.{name}", None)


def test_demo_writes_html_next_to_markdown_and_json(fake_chapters, tmp_path):
    import io

    ctx = runner.run_demo(quick=True, output_dir=str(tmp_path), stream=io.StringIO())
    assert ctx.html_path == str(tmp_path / "report.html")
    page = static_check(_read(ctx.html_path))
    assert {"chapter-1", "chapter-2", "settings", "versions"} <= page["ids"]
    text = page["text"]
    assert "Chapter 1: The first one" in text and "Chapter 2: The second one" in text
    assert "Chapter two's only section." in text
    # the Markdown table, the robustness report's tables and flags, the plot and the grid
    assert ["x", "y"] in [t[0] for t in page["tables"]]
    assert any(t and t[0][0] == "Check" for t in page["tables"])
    assert any(t and t[0][0] == "Class" for t in page["tables"])
    assert len(page["images"]) == 2 and all(w > 100 for w, _ in page["images"])
    # report.md keeps its Markdown (with the per-class table, the flags and the grid file)
    md = (tmp_path / "report.md").read_text()
    assert "#### Table 1 - digits" in md and "Per-class clean and robust accuracy" in md
    assert "`black_box_beats_white_box` [Linf, eps=0.1]: **FIRED**" in md
    assert "![clean and adversarial examples](table_1_digits_adv.png)" in md
    assert (tmp_path / "table_1_digits_adv.png").stat().st_size > 1000
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["first"] == {"value": 1.0} and results["second"] == [1, 2]
    assert [(c["number"], c["name"]) for c in results["run"]["chapters"]] == [
        (1, "alpha"), (2, "beta")]


def test_chapters_option_selects_by_number_and_name(fake_chapters, tmp_path):
    import io

    ctx = runner.run_demo(quick=True, output_dir=str(tmp_path), stream=io.StringIO(),
                          chapters="beta")
    assert [c["number"] for c in ctx.chapters] == [2] and "first" not in ctx.results
    text = static_check(_read(ctx.html_path))["text"]
    assert "Chapter 2: The second one" in text and "The first one" not in text
    assert runner.select_chapters("2, alpha") == [1, 2]
    assert runner.select_chapters("1-2") == [1, 2]
    assert runner.select_chapters(["BETA", 2]) == [2]
    assert runner.select_chapters(None) == [1, 2]
    for bad, match in [("3", "no chapter '3'"), ("0", "no chapter"), ("gamma", "'gamma' is "),
                       ("", "numbers 1-2 or names alpha, beta"), ("1,,2", "Received"),
                       ("2-1", "no chapter")]:
        with pytest.raises(ValueError, match=match):
            runner.select_chapters(bad)


def test_real_chapter_names():
    assert runner.chapter_names()[:5] == ["attacks", "defences", "training", "privacy", "rl"]
    assert runner.select_chapters("attacks,rl") == [1, 5]


def test_chapters_option_on_the_command_line(capsys):
    from keras_secure.cli import main

    for value, match in [("attacks,nope", "'nope' is none of them"), ("1,,3", "--chapters"),
                         ("99", "no chapter '99'")]:
        with pytest.raises(SystemExit) as info:
            main(["demo", "--quick", "--chapters", value])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------
# A real browser
# --------------------------------------------------------------------------------------------
needs_browser = pytest.mark.skipif(BROWSER is None, reason=NO_BROWSER)


@needs_browser
def test_evaluation_page_renders_in_a_browser(evaluation_page, tmp_path):
    shot = str(tmp_path / "report.png")
    page = check_in_browser(evaluation_page, shot)
    assert page["title"] == "keras-secure evaluate"
    with open(shot, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(head[16:20], "big") == 1280  # the screenshot's width
    target = os.environ.get("KERAS_SECURE_SCREENSHOT_DIR")
    if target:  # `make screenshot`: the docs' picture of the report
        check_in_browser(evaluation_page, os.path.join(target, "report-evaluate.png"))


@needs_browser
def test_browser_check_catches_broken_pages(tmp_path):
    """The check itself can fail: a broken image, a blocked remote image, a console error."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bad</title></head><body>"
        "<img alt='broken' src='data:image/png;base64,AAAA'>"
        "<script>console.error('boom')</script></body></html>", encoding="utf-8")
    with Browser(BROWSER) as browser:
        page = browser.open("file://" + str(bad))
    assert page["images"][0]["naturalWidth"] == 0
    assert any("boom" in e for e in page["errors"])
    with pytest.raises(AssertionError):
        check_in_browser(str(bad))
