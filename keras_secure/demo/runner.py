"""Runs the demo chapters and writes the report (Markdown + JSON + PNG plots)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

from keras_secure.demo import ch1_attacks, ch2_defences, ch3_training, ch4_privacy, ch5_rl


class DemoContext:
    """What a chapter gets: settings, a progress printer and the report being written.

    Attributes:
        quick: smaller budgets so that the whole demo takes under 2 minutes on 2 CPU cores.
        seed: seed of everything random in the chapter.
        output_dir: where the report, JSON results and plots are written.
    """

    def __init__(self, quick: bool, seed: int, output_dir: str, stream=None):
        self.quick = quick
        self.seed = seed
        self.output_dir = output_dir
        self.stream = stream or sys.stdout
        self.sections: list[str] = []
        self.results: dict = {}
        self.children: list = []  # child processes started by chapters' prepare()
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

    def write(self) -> str:
        """Write ``report.md`` and ``results.json``; returns the report's path."""
        mode = "quick" if self.quick else "full"
        header = ("# keras_secure demo report\n\n"
                  f"Mode: {mode}; seed: {self.seed}; total time: "
                  f"{time.perf_counter() - self._start:.1f} s.\n")
        report = self.path("report.md")
        with open(report, "w", encoding="utf-8") as f:
            f.write("\n".join([header, *self.sections]))
        with open(self.path("results.json"), "w", encoding="utf-8") as f:
            json.dump(self.results, f, indent=2, default=_json_default)
            f.write("\n")
        return report


def _json_default(value):
    if isinstance(value, float):
        return None
    return str(value)


#: The demo's chapters, in order: (title, function).
CHAPTERS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("Attacks on a digits CNN", ch1_attacks.run),
    ("Defences: input denoising and randomized smoothing", ch2_defences.run),
    ("Robust training: adversarial training and distillation", ch3_training.run),
    ("Privacy: DP-SGD and membership inference", ch4_privacy.run),
    ("Reinforcement learning: attacks and defences on a TF-Agents DQN agent", ch5_rl.run),
]


def run_demo(quick: bool = False, seed: int = 0, output_dir: str = "keras_secure_report",
             stream=None) -> DemoContext:
    """Run every chapter and write the report.

    Args:
        quick: small budgets (under 2 minutes on 2 CPU cores). Defaults to False.
        seed: seed of the whole run. Defaults to 0.
        output_dir: directory for ``report.md``, ``results.json`` and the plots; created if
            missing. Defaults to ``"keras_secure_report"``.
        stream: where progress and tables are printed. Defaults to ``sys.stdout``.

    Returns:
        The :class:`DemoContext` with the collected results.

    Example:
        >>> ctx = run_demo(quick=True, output_dir="/tmp/report")
    """
    os.makedirs(output_dir, exist_ok=True)
    ctx = DemoContext(quick, seed, output_dir, stream)
    for _, chapter in CHAPTERS:  # chapters with slow set-up start it now (chapter 5's child)
        prepare = getattr(sys.modules[chapter.__module__], "prepare", None)
        if prepare is not None:
            prepare(ctx)
    try:
        for number, (title, chapter) in enumerate(CHAPTERS, start=1):
            ctx.log(f"Chapter {number}: {title}")
            ctx.section(f"## Chapter {number}: {title}")
            chapter(ctx)
    finally:
        for child in ctx.children:  # started by a chapter's prepare() and not consumed
            if child.poll() is None:
                child.kill()
    path = ctx.write()
    ctx.log(f"Report written to {path}")
    return ctx
