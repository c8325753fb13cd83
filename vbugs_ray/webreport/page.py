"""Rendering report.html: a jinja2 template with autoescaping, its stylesheet and script inlined,
and a Content-Security-Policy that allows exactly those (by hash) and data: images, nothing else:
no request can leave the page, and markup injected through a hostile string could not run."""

from __future__ import annotations

import base64
import datetime
import hashlib
import math
from importlib import resources
from pathlib import Path

import jinja2

from vbugs_ray.atomic import atomic_write
from vbugs_ray.webreport.context import page_context

FILE = "report.html"


def _template_text(name: str) -> str:
    return resources.files("vbugs_ray.webreport").joinpath("templates", name).read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def csp(css: str, js: str) -> str:
    """Nothing may load from anywhere; only this stylesheet, this script and inline images run."""
    return (f"default-src 'none'; img-src data:; style-src {_hash(css)}; script-src {_hash(js)}; "
            "base-uri 'none'; form-action 'none'")


def _missing(value) -> bool:
    """None (report.json writes a non-finite number as null) or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def pct(value) -> str:
    return "–" if _missing(value) else f"{100 * value:.1f}%"


def sci(value) -> str:
    return "–" if _missing(value) else f"{value:.2e}"


def num(value) -> str:
    """Two decimals; an effect size of a slice that always fails against a rest that never does
    is infinite, which report.json holds as null."""
    return "∞" if value is None else "–" if _missing(value) else f"{value:.2f}"


def secs(value: float) -> str:
    value = round(value)
    return f"{value // 3600}h {value % 3600 // 60:02d}m" if value >= 3600 else \
        f"{value // 60}m {value % 60:02d}s" if value >= 60 else f"{value}s"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("vbugs_ray.webreport", "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(pct=pct, sci=sci, num=num, secs=secs)
    return env


def render(context: dict, run_dir: str) -> str:
    css, js = _template_text("report.css"), _template_text("sort.js")
    template = environment().get_template("report.html.j2")
    written = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return template.render(**context, s=context["summary"], css=css, js=js, csp=csp(css, js), written=written,
                           run_dir=run_dir)


def write_page(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    html = render(page_context(run_dir), str(run_dir))
    return atomic_write(run_dir / FILE, lambda tmp: tmp.write_text(html, encoding="utf-8"))
