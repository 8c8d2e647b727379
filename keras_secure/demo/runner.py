"""Runs the demo chapters and writes the report: Markdown, JSON, PNG plots and one
self-contained HTML page."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Callable, Sequence

from keras_secure.demo import (
    ch1_attacks,
    ch2_defences,
    ch3_training,
    ch4_privacy,
    ch5_rl,
    ch_explain,
    ch_federated,
    ch_masking,
    ch_poisoning,
)


class DemoContext:
    """What a chapter gets: settings, a progress printer and the report being written.

    Attributes:
        quick: smaller budgets so that the whole demo takes under 2 minutes on 2 CPU cores.
        seed: seed of everything random in the chapter.
        output_dir: where the report, JSON results and plots are written.
        sections: the report's Markdown blocks, in order.
        results: JSON-ready results, one key per table (written to ``results.json``).
        chapters: one dict per chapter run: ``number``, ``name``, ``title``, ``seconds`` and
            the range of :attr:`sections` it wrote (``first``, ``end``).
        html_path: the HTML report's path once :meth:`write` has run.
    """

    def __init__(self, quick: bool, seed: int, output_dir: str, stream=None):
        self.quick = quick
        self.seed = seed
        self.output_dir = output_dir
        self.stream = stream or sys.stdout
        self.sections: list[str] = []
        self.results: dict = {}
        self.children: list = []  # child processes started by chapters' prepare()
        self.chapters: list[dict] = []
        self.html_path: str | None = None
        self._reports: dict[int, tuple] = {}  # section index -> (report, title)
        self._start = time.perf_counter()

    def log(self, message: str) -> None:
        """Print a progress line prefixed with the elapsed time."""
        elapsed = time.perf_counter() - self._start
        print(f"[{elapsed:6.1f}s] {message}", file=self.stream, flush=True)

    def section(self, markdown: str) -> None:
        """Append a Markdown block to the report."""
        self.sections.append(markdown.rstrip() + "\n")

    def path(self, name: str) -> str:
        """Path of a file in the output directory."""
        return os.path.join(self.output_dir, name)

    def line_plot(self, filename: str, xs, curves: dict, xlabel: str, ylabel: str,
                  size=(6, 4)) -> str:
        """Save a plot of percentage curves (fractions in [0, 1], plotted as %) and return its
        file name (relative to the report)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=size)
        for label, curve in curves.items():
            ax.plot(xs[:len(curve)], 100 * np.asarray(curve), marker="o", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.path(filename), dpi=100)
        plt.close(fig)
        return filename

    def robustness_report(self, report, title: str, grid_file: str | None = None) -> None:
        """Add a :class:`~keras_secure.evaluation.RobustnessReport` to the report.

        ``report.md`` gets its full table, its gradient-masking flags (when the report has
        diagnostics), its per-class clean and robust accuracy and, when the report kept its
        adversarial examples and they are images, a picture grid of clean vs adversarial
        inputs saved as ``grid_file``. The HTML page renders the same report natively (fired
        flags marked, the model's reading, warnings).

        Args:
            report: a report from ``evaluate_robustness``.
            title: a heading, e.g. ``"Table 1 - accuracy under attack"``.
            grid_file: file name of the picture grid in the output folder. Defaults to one
                derived from ``title``.
        """
        parts = [f"#### {title}", report.table(full=True)]
        for warning in (getattr(report, "classifier", None) or {}).get("warnings", []) or []:
            parts.append(f"**Warning:** {warning}")
        diagnostics = diagnostics_markdown(report)
        if diagnostics:
            parts.append(diagnostics)
        try:
            parts.append("Per-class clean and robust accuracy (%)\n\n" + report.per_class_table())
        except (AttributeError, ValueError):
            pass
        if getattr(report, "adversarial", None):
            from keras_secure.reporting import plot_adversarial_examples

            name = grid_file or re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") + "_adv.png"
            try:
                plot_adversarial_examples(report, path=self.path(name))
                parts.append(f"![clean and adversarial examples]({name})")
            except ValueError:  # not images
                pass
        self.section("\n\n".join(parts))
        self._reports[len(self.sections) - 1] = (report, title)

    def write(self) -> str:
        """Write ``report.md``, ``results.json`` and ``report.html``; returns the Markdown
        report's path (the HTML one is :attr:`html_path`)."""
        seconds = time.perf_counter() - self._start
        mode = "quick" if self.quick else "full"
        header = ("# keras_secure demo report\n\n"
                  f"Mode: {mode}; seed: {self.seed}; total time: {seconds:.1f} s.\n")
        if self.chapters:
            header += "\n" + "\n".join(
                f"- Chapter {c['number']} ({c['name']}): {c['title']} - {c['seconds']:.1f} s"
                for c in self.chapters) + "\n"
        report = self.path("report.md")
        with open(report, "w", encoding="utf-8") as f:
            f.write("\n".join([header, *self.sections]))
        run = {"mode": mode, "seed": self.seed, "total_seconds": round(seconds, 1),
               "chapters": [{k: c[k] for k in ("number", "name", "title", "seconds")}
                            for c in self.chapters]}
        with open(self.path("results.json"), "w", encoding="utf-8") as f:
            json.dump({"run": run, **self.results}, f, indent=2, default=_json_default)
            f.write("\n")
        self.html_path = self.write_html(seconds)
        return report

    def write_html(self, seconds: float | None = None) -> str:
        """Write ``report.html``: every chapter's sections (Markdown converted, images
        embedded), robustness reports rendered natively, settings, versions and run time."""
        from keras_secure.reporting import HtmlReport

        mode = "quick" if self.quick else "full"
        page = HtmlReport(
            "keras_secure demo report",
            subtitle=f"{mode} mode, seed {self.seed}: "
                     + ", ".join(f"chapter {c['number']} ({c['name']})" for c in self.chapters),
            settings={"mode": mode, "seed": self.seed, "output folder": self.output_dir,
                      "chapters": [c["number"] for c in self.chapters],
                      **{f"chapter {c['number']} time": f"{c['seconds']:.1f} s"
                         for c in self.chapters}},
            base_dir=self.output_dir)
        spans = [(c["first"], c["end"], c) for c in self.chapters]
        if not spans:  # sections written outside run_demo's chapters
            spans = [(0, len(self.sections), None)]
        covered = set()
        for first, end, chapter in spans:
            if chapter is None:
                section = page.section("Report")
            else:
                section = page.section(f"Chapter {chapter['number']}: {chapter['title']}",
                                       anchor=f"chapter-{chapter['number']}",
                                       meta=f"{chapter['name']}, {chapter['seconds']:.1f} s")
            for index in range(first, end):
                covered.add(index)
                if index in self._reports:
                    report, title = self._reports[index]
                    page.add_robustness_report(section, report, title)
                elif not (chapter is not None and index == first
                          and self.sections[index].startswith("## Chapter")):
                    page.add_markdown(section, self.sections[index])
        rest = [i for i in range(len(self.sections)) if i not in covered]
        if rest:
            section = page.section("Other sections")
            for index in rest:
                page.add_markdown(section, self.sections[index])
        path = page.write(self.path("report.html"), run_seconds=seconds)
        for problem in page.problems:
            self.log(f"HTML report: {problem}")
        return path


def diagnostics_markdown(report) -> str:
    """A report's gradient-masking flags as Markdown ("" when it has none to show)."""
    flags = getattr(report, "diagnostics", [])
    if flags is None:
        return ("Gradient-masking checks: **not run** for this report (its figures carry no "
                "check that the attacks worked).")
    if not flags:
        return ""
    marks = {True: "**FIRED**", False: "ok", None: "not checked"}
    lines = ["Gradient-masking checks:", ""]
    for flag in flags:
        flag = flag if isinstance(flag, dict) else flag.to_dict()
        where = f" [{flag['threat_model']}]" if flag.get("threat_model") else ""
        lines.append(f"- `{flag.get('flag')}`{where}: {marks.get(flag.get('fired'), '?')}. "
                     f"{flag.get('message', '')}")
    return "\n".join(lines)


def _json_default(value):
    if isinstance(value, float):
        return None
    return str(value)


#: The demo's chapters, in order: (title, function). A chapter's short name (for
#: ``--chapters``) is its module's ``CHAPTER_NAME``, or the module name without its ``chN_`` /
#: ``ch_`` prefix (``ch1_attacks`` -> ``attacks``).
CHAPTERS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("Attacks on a digits CNN", ch1_attacks.run),
    ("Defences: input denoising and randomized smoothing", ch2_defences.run),
    ("Robust training: adversarial training and distillation", ch3_training.run),
    ("Privacy: DP-SGD and membership inference", ch4_privacy.run),
    ("Reinforcement learning: attacks and defences on a TF-Agents PPO agent", ch5_rl.run),
    ("Honest evaluation: gradient masking and seed 002's RL-trained classifier",
     ch_masking.run),
    ("Data poisoning: backdoors, detection and repair", ch_poisoning.run),
    ("Explainability: SHAP vs LIME attributions and an attribution-based detector",
     ch_explain.run),
    ("Federated learning on Flower: malicious clients, robust aggregation and user-level DP",
     ch_federated.run),
]


def chapter_name(chapter: Callable) -> str:
    """The short name of a chapter function (``attacks``, ``defences``, ...)."""
    module = sys.modules.get(chapter.__module__)
    name = getattr(module, "CHAPTER_NAME", None)
    if name:
        return str(name)
    return re.sub(r"^ch\d*_", "", chapter.__module__.rsplit(".", 1)[-1])


def chapter_names() -> list[str]:
    """The short names of :data:`CHAPTERS`, in order."""
    return [chapter_name(fn) for _, fn in CHAPTERS]


def select_chapters(chapters: str | Sequence | None) -> list[int]:
    """The chapter numbers (1-based, in the demo's order) selected by ``chapters``.

    Args:
        chapters: None for all; or numbers and short names, as a comma-separated string
            (``"1,3"``, ``"attacks,training"``, ``"1-3"``) or a sequence (``[1, "rl"]``).
            Names are case-insensitive; repeats are ignored; chapters always run in order.

    Returns:
        The sorted chapter numbers.

    Raises:
        ValueError: for an empty selection, a number out of range or an unknown name; the
            message lists the valid numbers and names.

    Example:
        >>> select_chapters("attacks,3")
        [1, 3]
    """
    count, names = len(CHAPTERS), chapter_names()
    if chapters is None:
        return list(range(1, count + 1))
    valid = (f"numbers 1-{count} or names {', '.join(names)}, comma-separated (e.g. "
             f"'1,3' or '{names[0]},{names[-1]}')")
    tokens = ([t.strip() for t in chapters.split(",")] if isinstance(chapters, str)
              else [str(t).strip() for t in chapters])
    if not tokens or not all(tokens):
        raise ValueError(f"`chapters` must be {valid}. Received: chapters={chapters!r}")
    chosen = set()
    for token in tokens:
        span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", token)
        if token.isdigit() or span:
            low, high = (int(token), int(token)) if not span else map(int, span.groups())
            if not 1 <= low <= high <= count:
                raise ValueError(f"`chapters` must be {valid}; there is no chapter "
                                 f"{token!r}. Received: chapters={chapters!r}")
            chosen.update(range(low, high + 1))
        elif token.lower() in names:
            chosen.add(names.index(token.lower()) + 1)
        else:
            raise ValueError(f"`chapters` must be {valid}; {token!r} is none of them. "
                             f"Received: chapters={chapters!r}")
    return sorted(chosen)


def run_demo(quick: bool = False, seed: int = 0, output_dir: str = "keras_secure_report",
             stream=None, chapters: str | Sequence | None = None) -> DemoContext:
    """Run the chapters and write the report.

    Args:
        quick: small budgets (under 2 minutes on 2 CPU cores). Defaults to False.
        seed: seed of the whole run. Defaults to 0.
        output_dir: directory for ``report.md``, ``report.html``, ``results.json`` and the
            plots; created if missing. Defaults to ``"keras_secure_report"``.
        stream: where progress and tables are printed. Defaults to ``sys.stdout``.
        chapters: which chapters to run (see :func:`select_chapters`). Defaults to all.

    Returns:
        The :class:`DemoContext` with the collected results.

    Raises:
        ValueError: for a bad ``chapters`` selection (before anything runs).

    Example:
        >>> ctx = run_demo(quick=True, output_dir="/tmp/report", chapters="attacks,training")
    """
    selected = select_chapters(chapters)
    os.makedirs(output_dir, exist_ok=True)
    ctx = DemoContext(quick, seed, output_dir, stream)
    todo = [(n, *CHAPTERS[n - 1]) for n in selected]
    for _, _, chapter in todo:  # chapters with slow set-up start it now (chapter 5's child)
        prepare = getattr(sys.modules[chapter.__module__], "prepare", None)
        if prepare is not None:
            prepare(ctx)
    background = [chapter_name(fn) for _, _, fn in todo if _in_child(fn)]
    helper = _start_child_chapters(ctx, background) if background else None
    try:
        for number, title, chapter in todo:
            ctx.log(f"Chapter {number}: {title}")
            start, first = time.perf_counter(), len(ctx.sections)
            ctx.section(f"## Chapter {number}: {title}")
            seconds = None
            if _in_child(chapter):
                seconds = _collect_child_chapter(ctx, helper, chapter_name(chapter))
            else:
                chapter(ctx)
            ctx.chapters.append({"number": number, "name": chapter_name(chapter),
                                 "title": title, "first": first, "end": len(ctx.sections),
                                 "seconds": round(seconds if seconds is not None else
                                                  time.perf_counter() - start, 1)})
    finally:
        for child in ctx.children:  # started by a chapter's prepare() and not consumed
            if child.poll() is None:
                child.kill()
    path = ctx.write()
    ctx.log(f"Report written to {path} and {ctx.html_path}")
    return ctx


# -- chapters that run in a child process --------------------------------------------------------
# A chapter module that sets ``IN_CHILD_PROCESS = True`` runs in one child process started at
# the beginning of the demo (all such chapters in order, in the same child), on the second
# core while this process runs the others; at its turn the parent waits for it and copies its
# printed output, Markdown sections and results into the report. Its pictures are written to
# the same folder. The demo's time budget (2 minutes quick on 2 cores) needs the parallelism.

def _in_child(chapter) -> bool:
    return bool(getattr(sys.modules[chapter.__module__], "IN_CHILD_PROCESS", False))


def _start_child_chapters(ctx, names: list[str]):
    import subprocess
    import tempfile

    # the child's progress lines count from the parent's start, like the parent's
    started = time.time() - (time.perf_counter() - ctx._start)
    command = [sys.executable, "-m", "keras_secure.demo.runner", "--output", ctx.output_dir,
               "--seed", str(ctx.seed), "--chapters", ",".join(names),
               "--started", repr(started)]
    stderr = tempfile.TemporaryFile("w+", encoding="utf-8")
    child = subprocess.Popen(command + (["--quick"] if ctx.quick else []),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                             text=True)
    ctx.children.append(child)
    return child, stderr


def _collect_child_chapter(ctx, helper, name: str) -> float:
    """Wait for the child's chapter ``name``; copy its output, sections and results. Returns
    the seconds it took in the child."""
    child, stderr = helper
    for line in child.stdout:
        if line.strip() == f"DONE {name}":
            break
    path = os.path.join(ctx.output_dir, f".chapter_{name}.json")
    if not os.path.exists(path):
        child.wait()
        stderr.seek(0)
        raise RuntimeError(f"The demo's chapter {name!r} (run in a child process) failed:\n"
                           f"{stderr.read()[-3000:]}")
    with open(path, encoding="utf-8") as f:
        done = json.load(f)
    os.remove(path)
    if "error" in done:
        raise RuntimeError(f"The demo's chapter {name!r} (run in a child process) failed:\n"
                           f"{done['error']}")
    print(done["output"], end="", file=ctx.stream, flush=True)
    ctx.sections.extend(done["sections"])
    ctx.results.update(done["results"])
    return done["seconds"]


def _child_main(argv=None) -> int:
    """Run chapters for a parent demo: ``python -m keras_secure.demo.runner --output DIR
    --seed N --chapters a,b [--quick]``."""
    import argparse
    import contextlib
    import io
    import traceback

    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--chapters", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--started", type=float, default=None)
    args = parser.parse_args(argv)
    functions = {chapter_name(fn): fn for _, fn in CHAPTERS}
    status = 0
    for name in args.chapters.split(","):
        buffer = io.StringIO()
        ctx = DemoContext(args.quick, args.seed, args.output, stream=buffer)
        if args.started is not None:
            ctx._start = time.perf_counter() - (time.time() - args.started)
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(buffer):
                functions[name](ctx)
            done = {"output": buffer.getvalue(), "sections": ctx.sections,
                    "results": json.loads(json.dumps(ctx.results, default=_json_default)),
                    "seconds": time.perf_counter() - start}
        except Exception:  # reported by the parent, with the traceback
            done = {"error": buffer.getvalue()[-2000:] + traceback.format_exc()}
            status = 1
        with open(os.path.join(args.output, f".chapter_{name}.json"), "w",
                  encoding="utf-8") as f:
            json.dump(done, f)
        print(f"DONE {name}", flush=True)
        if status:
            break
    return status


if __name__ == "__main__":
    sys.exit(_child_main())
