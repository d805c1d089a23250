"""What the Prefect UI shows of a run: markdown artifacts with the run's pictures inlined.

The UI renders a markdown artifact's images from data URIs, so a contact sheet is visible where
the operator looks, with no file server. Artifacts are a view: failing to publish one is a
warning, never a failed run (the files are the results).
"""

from __future__ import annotations

import base64
from pathlib import Path

from realsr.steps.sheets import preview


def image_markdown(path: Path | str | None, title: str) -> str:
    """`![title](data:...)` and the file's path, or nothing when there is no such picture."""
    if not path or not Path(path).exists():
        return ""
    mime, data = preview(Path(path))
    return f"**{title}** (`{path}`)\n\n![{title}](data:{mime};base64,{base64.b64encode(data).decode()})\n"


def publish(log, markdown: str | None = None, key: str = "", description: str = "", table: list[dict] | None = None, table_key: str = "", table_description: str = "") -> None:
    """A markdown and/or a table artifact; a failure is logged, not raised."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    try:
        if markdown is not None:
            create_markdown_artifact(markdown, key=key, description=description)
        if table:
            create_table_artifact(table, key=table_key, description=table_description)
    except Exception as e:  # artifacts are a view; the files are the results
        log.warning(f"artifacts not published: {e}")
