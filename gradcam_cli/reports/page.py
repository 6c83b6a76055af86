"""The HTML pages' templates (templates/*.html), each with the shared look (templates/look.css) in place."""

from __future__ import annotations

from importlib import resources


def read_template(name: str) -> str:
    """templates/NAME with templates/look.css where it says {{LOOK}}, so the gallery and the sweep's page
    share one palette, header and facts style."""
    folder = resources.files("gradcam_cli.reports").joinpath("templates")
    look = folder.joinpath("look.css").read_text(encoding="utf-8").rstrip("\n")
    return folder.joinpath(name).read_text(encoding="utf-8").replace("{{LOOK}}", look)
