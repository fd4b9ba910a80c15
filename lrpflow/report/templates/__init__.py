"""Jinja2 templates of the HTML reports (``*.html.j2``, shipped as package data)."""
from __future__ import annotations

import functools
import math
from typing import Any


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    """The Jinja2 environment: templates from this package, HTML autoescaping on."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("lrpflow.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = number
    return env


def number(value: Any, digits: int = 4) -> str:
    """A number for a table cell: ``4`` significant digits, ``–`` for None/NaN."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "–" if math.isnan(value) else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def render_template(name: str, **context: Any) -> str:
    """Render one template of this package."""
    return environment().get_template(name).render(**context)
