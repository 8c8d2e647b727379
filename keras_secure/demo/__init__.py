"""The ``keras-secure demo``: the library's story end to end, in chapters.

Each chapter is a function ``chapter(ctx) -> None`` that trains/evaluates on data shipped with
the install, prints its tables and adds sections (tables, plots) to the report through the
:class:`DemoContext`. Chapters are registered in :data:`CHAPTERS` in order.
"""

from keras_secure.demo.runner import CHAPTERS, DemoContext, run_demo

__all__ = ["CHAPTERS", "DemoContext", "run_demo"]
