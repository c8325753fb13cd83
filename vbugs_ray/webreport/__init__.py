"""RUN_DIR/report.html: the audit for a person to look at (``write_html``); report.json stays
the contract for programs. Heavy imports (matplotlib, jinja2, Pillow) wait until a page is made."""

from __future__ import annotations

from pathlib import Path


def write_html(run_dir: str | Path) -> Path:
    """Render RUN_DIR/report.html from the run's report.json, rows and verification rounds."""
    from vbugs_ray.webreport.page import write_page

    return write_page(run_dir)
