"""One self-contained HTML page for a demo run or a robustness evaluation.

The page is rendered from a jinja2 template shipped in the package
(``keras_secure/reporting/templates/report.html.j2``). Everything it shows is inside the file:
Markdown sections converted with the ``markdown`` library, plots and pictures embedded as
base64 ``data:`` URIs, no script, and a Content-Security-Policy that forbids loading anything
from elsewhere (so a page that shows correctly from one folder shows correctly anywhere).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import io
import json
import math
import mimetypes
import os
import platform
import re

__all__ = ["HtmlReport", "Section", "data_uri", "markdown_to_html", "versions"]

#: the distributions whose versions the page lists
VERSION_DISTRIBUTIONS = ("keras-secure", "keras", "tensorflow", "numpy", "scikit-learn",
                         "matplotlib", "mlxtend", "tf-agents", "jinja2", "markdown")
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".gif": "image/gif", ".svg": "image/svg+xml", ".webp": "image/webp"}
_STATUS = {True: ("FIRED", "fired"), False: ("ok", "ok"), None: ("not checked", "unchecked")}


def data_uri(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,...`` of ``data``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return data_uri(buffer.getvalue(), "image/png")


def versions() -> dict[str, str]:
    """Python, the platform and the versions of the main installed distributions."""
    from importlib import metadata

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in VERSION_DISTRIBUTIONS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:  # the source's version wins over stale editable-install metadata
        from keras_secure_cli import version

        found["keras-secure"] = version()
    except ImportError:
        pass
    return found


def markdown_to_html(text: str, base_dir: str | None = None,
                     problems: list | None = None) -> str:
    """Convert Markdown (tables, fenced code) to HTML, embedding local images as data URIs.

    Args:
        text: Markdown.
        base_dir: the folder relative image paths are read from. Defaults to the current one.
        problems: a list that receives one message per image that could not be embedded (a
            missing file, a remote address); such an image is replaced by a visible note.

    Returns:
        The HTML fragment.
    """
    import markdown
    from markdown.treeprocessors import Treeprocessor

    base = base_dir or os.getcwd()
    found = problems if problems is not None else []

    class _Embed(Treeprocessor):
        def run(self, root):
            for parent in list(root.iter()):
                for index, img in enumerate(list(parent)):
                    if img.tag != "img":
                        continue
                    src = img.get("src", "")
                    if src.startswith("data:"):
                        continue
                    uri, problem = _embed_file(src, base)
                    if uri is not None:
                        img.set("src", uri)
                        continue
                    found.append(problem)
                    note = parent.makeelement("span", {"class": "missing"})
                    note.text = f"[image not embedded: {problem}]"
                    note.tail = img.tail
                    parent.remove(img)
                    parent.insert(index, note)

    class _Extension(markdown.Extension):
        def extendMarkdown(self, md):
            md.treeprocessors.register(_Embed(md), "keras_secure_embed", 0)

    converter = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists",
                                              _Extension()])
    return converter.convert(text)


def _embed_file(src: str, base: str) -> tuple[str | None, str | None]:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", src) or src.startswith("//"):
        return None, f"{src!r} is not a local file (the page loads nothing from elsewhere)"
    path = src if os.path.isabs(src) else os.path.join(base, src)
    ext = os.path.splitext(path)[1].lower()
    mime = _IMAGE_TYPES.get(ext) or mimetypes.guess_type(path)[0]
    if not mime or not mime.startswith("image/"):
        return None, f"{src!r} is not an image file"
    try:
        with open(path, "rb") as f:
            return data_uri(f.read(), mime), None
    except OSError as err:
        return None, f"{src!r} could not be read ({err.strerror or err})"


@dataclasses.dataclass
class Section:
    """A titled part of the page (a demo chapter, the evaluation); blocks render in order."""

    title: str
    anchor: str
    meta: str = ""
    blocks: list = dataclasses.field(default_factory=list)


class HtmlReport:
    """Builds the self-contained HTML page of a run.

    Args:
        title: the page's title.
        subtitle: one line under it. Defaults to none.
        settings: what was run, shown as a table (names -> values; lists and dicts are shown
            as JSON). Defaults to none.
        base_dir: folder of the images that Markdown blocks refer to. Defaults to the current
            folder.

    Example:
        >>> page = HtmlReport("keras-secure evaluate", settings={"eps": 0.3})
        >>> section = page.section("Robustness")
        >>> page.add_robustness_report(section, report, "model.keras")
        >>> page.write("report.html", run_seconds=12.3)
    """

    def __init__(self, title: str, subtitle: str = "", settings: dict | None = None,
                 base_dir: str | None = None):
        self.title = title
        self.subtitle = subtitle
        self.settings = dict(settings or {})
        self.base_dir = base_dir
        self.sections: list[Section] = []
        #: messages about content that could not be embedded (shown in the page too)
        self.problems: list[str] = []

    # -- building ----------------------------------------------------------------------------
    def section(self, title: str, anchor: str | None = None, meta: str = "") -> Section:
        """Start a new section and return it."""
        anchor = anchor or re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        taken = {s.anchor for s in self.sections}
        unique, i = anchor, 1
        while unique in taken:
            i += 1
            unique = f"{anchor}-{i}"
        section = Section(title, unique, meta)
        self.sections.append(section)
        return section

    def add_markdown(self, section: Section, text: str) -> None:
        """A Markdown block (tables and local images, embedded)."""
        section.blocks.append({"kind": "html", "html": markdown_to_html(
            text, self.base_dir, self.problems)})

    def add_figure(self, section: Section, figure, caption: str = "") -> None:
        """A matplotlib ``Figure`` or the path of an image file, embedded."""
        if isinstance(figure, (str, os.PathLike)):
            uri, problem = _embed_file(os.fspath(figure), self.base_dir or os.getcwd())
            if uri is None:
                self.problems.append(problem)
                section.blocks.append({"kind": "missing", "text": problem})
                return
        else:
            uri = _figure_uri(figure)
        section.blocks.append({"kind": "figure", "src": uri, "caption": caption})

    def add_robustness_report(self, section: Section, report, title: str = "",
                              grid: bool = True) -> None:
        """A :class:`~keras_secure.evaluation.RobustnessReport`: how the model was read (and
        its warnings), the full table, the gradient-masking flags, per-class accuracy and, if
        the report kept them and ``grid`` is True, a grid of adversarial examples."""
        block = robustness_block(report, title, grid)
        self.problems.extend(block.pop("problems"))
        section.blocks.append(block)

    # -- output ------------------------------------------------------------------------------
    def render(self, run_seconds: float | None = None) -> str:
        """The page as a string."""
        import jinja2

        env = jinja2.Environment(
            loader=jinja2.PackageLoader("keras_secure.reporting", "templates"),
            autoescape=jinja2.select_autoescape(("html", "j2")),
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        env.filters["json"] = lambda value: json.dumps(value, default=str)
        reports = [b for s in self.sections for b in s.blocks if b["kind"] == "robustness"]
        fired = [(b, f) for b in reports for f in b["diagnostics"] or [] if f["fired"]]
        # a report without indicators (switched off, or a report type without them) says
        # nothing about masking: the page never counts it as "no flag fired"
        unchecked = [b for b in reports if not b["diagnostics"]]
        return env.get_template("report.html.j2").render(
            title=self.title, subtitle=self.subtitle, sections=self.sections,
            settings=[(k, _setting(v)) for k, v in self.settings.items()],
            versions=versions(), problems=self.problems,
            run_time=_duration(run_seconds) if run_seconds is not None else None,
            generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            num_reports=len(reports), fired=fired,
            unchecked=unchecked)

    def write(self, path: str, run_seconds: float | None = None) -> str:
        """Write the page (UTF-8) and return its path."""
        text = self.render(run_seconds)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


def robustness_block(report, title: str = "", grid: bool = True) -> dict:
    """What the template needs to show a robustness report (see
    :meth:`HtmlReport.add_robustness_report`)."""
    problems: list[str] = []
    info = dict(getattr(report, "classifier", {}) or {})
    warnings = [str(w) for w in info.pop("warnings", []) or []]
    adaptive = info.pop("adaptive_path", None) or []
    diagnostics = getattr(report, "diagnostics", [])
    if diagnostics is not None:
        diagnostics = [_diagnostic(d) for d in diagnostics]
    try:
        per_class = markdown_to_html(report.per_class_table(), problems=problems)
    except (AttributeError, ValueError):
        per_class = None
    picture = None
    if grid and getattr(report, "adversarial", None):
        from keras_secure.reporting.plots import plot_adversarial_examples

        try:
            picture = _figure_uri(plot_adversarial_examples(report))
        except ValueError:  # not images: the arrays are still in save_adversarial's file
            picture = None
    suite = getattr(report, "suite", None)
    return {"kind": "robustness", "title": title,
            "anchor": re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-"),
            "classifier": [(k, _setting(v)) for k, v in info.items()],
            "adaptive_path": [str(step) for step in adaptive],
            "warnings": warnings,
            "table": markdown_to_html(report.table(full=True), problems=problems),
            "diagnostics": diagnostics, "per_class": per_class, "grid": picture,
            "suite": [(k, _setting(v)) for k, v in suite.items()] if isinstance(suite, dict)
            else None,
            "problems": problems}


def _diagnostic(flag) -> dict:
    """A gradient-masking indicator (a dict or an object with ``to_dict``) for the template."""
    if not isinstance(flag, dict):
        flag = flag.to_dict() if hasattr(flag, "to_dict") else dataclasses.asdict(flag)
    fired = flag.get("fired")
    label, css = _STATUS.get(fired if fired is None else bool(fired), ("?", "unchecked"))
    evidence = flag.get("evidence") or {}
    return {"flag": str(flag.get("flag", "?")), "fired": fired, "status": label, "css": css,
            "threat_model": flag.get("threat_model") or "",
            "message": str(flag.get("message", "")),
            "evidence": ", ".join(f"{k}={_short(v)}" for k, v in evidence.items()),
            "reference": str(flag.get("reference") or "")}


def _short(value) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return "[" + ", ".join(_short(v) for v in value[:8]) + ", ...]"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _setting(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(float(seconds), 60.0)
    return f"{seconds:.1f} s" if minutes < 1 else f"{int(minutes)} min {rest:.0f} s"

