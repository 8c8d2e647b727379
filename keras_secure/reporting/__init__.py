"""Reports people read: a self-contained HTML page of a demo run or a robustness evaluation
(jinja2 template, Markdown converted, plots embedded), and the pictures in it.

Example:
    >>> from keras_secure.reporting import HtmlReport, plot_adversarial_examples
    >>> page = HtmlReport("My model", settings={"eps": 0.3})
    >>> page.add_robustness_report(page.section("Robustness"), report, "PGD and Square")
    >>> page.write("report.html", run_seconds=42.0)
"""

from keras_secure.reporting.html import HtmlReport, Section, markdown_to_html, versions
from keras_secure.reporting.plots import plot_adversarial_examples

__all__ = ["HtmlReport", "Section", "markdown_to_html", "plot_adversarial_examples", "versions"]
