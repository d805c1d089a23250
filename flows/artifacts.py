"""What the Prefect UI shows of a run: markdown artifacts with the run's pictures inlined.

The UI renders a markdown artifact's images from data URIs, so a contact sheet is visible where
the operator looks, with no file server. Artifacts are a view: failing to publish one is a
warning, never a failed run (the files are the results).
"""

from __future__ import annotations

import base64
from pathlib import Path

from realsr.models.errors import RealsrError
from realsr.steps.sheets import preview
from realsr.storage.remote import RemoteError, fetch_file, is_url


def image_markdown(path: Path | str | None, title: str) -> str:
    """`![title](data:...)` and the file's path, or nothing when there is no such picture."""
    shown = path
    if path and is_url(path):  # a stage's sheet at a URL: a local copy
        try:
            path = fetch_file(str(path), "sheets")
        except RemoteError:
            return ""
    if not path or not Path(path).exists():
        return ""
    mime, data = preview(Path(path))
    return f"**{title}** (`{shown}`)\n\n![{title}](data:{mime};base64,{base64.b64encode(data).decode()})\n"


def means_markdown(means: list[dict], results_md: Path | str | None = None) -> str:
    """evaluate's mean table, narrow enough for the UI's artifact panel (results.md has all ten
    columns; eight long headers there clip the last); the models that could not run, from results.md."""
    cols = [
        (c, name, digits)
        for c, name, digits in (
            ("psnr_y", "PSNR-Y", 2),
            ("ssim_y", "SSIM-Y", 4),
            ("psnr_rgb", "PSNR-RGB", 2),
            ("ssim_rgb", "SSIM-RGB", 4),
            ("lpips", "LPIPS", 4),
            ("niqe", "NIQE", 3),
        )
        if any(c in m for m in means)
    ]
    lines = ["| model | images | " + " | ".join(name for _, name, _ in cols) + (" | " if cols else "") + "s/img |", "|---" * (len(cols) + 3) + "|"]
    for m in means:
        images = (
            str(m["images"])
            if m.get("scored", m["images"]) == m["images"] or all(c == "niqe" for c, _, _ in cols)
            else f"{m['images']} ({m['scored']} with HR)"
        )
        vals = [f"{m[c]:.{d}f}" if c in m else "-" for c, _, d in cols]
        lines.append("| " + " | ".join([m["model"], images, *vals, f"{m['seconds']:.2f}"]) + " |")
    rest = Path(results_md).read_text().split("\n\n", 1)[1:] if results_md and Path(results_md).exists() else []
    return "\n".join(lines) + "\n" + "".join("\n" + r for r in rest)


def publish(
    log, markdown: str | None = None, key: str = "", description: str = "", table: list[dict] | None = None, table_key: str = "", table_description: str = ""
) -> None:
    """A markdown and/or a table artifact; a failure is logged, not raised."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    try:
        if markdown is not None:
            create_markdown_artifact(markdown, key=key, description=description)
        if table:
            create_table_artifact(table, key=table_key, description=table_description)
    except Exception as e:  # artifacts are a view; the files are the results
        log.warning(f"artifacts not published: {e}")


class NothingUsable(RealsrError, ValueError):
    """A stage ran but made nothing a later stage can use: its flow run ends Failed, the CLI exits 2."""


def warning_markdown(warnings: list[str], error: str | None = None) -> str:
    """What an artifact opens with when its run made nothing usable, or warned."""
    lines = ([f"**ERROR: {error}**"] if error else []) + [f"**WARNING: {w}**" for w in warnings]
    return "".join(f"{line}\n\n" for line in lines)


def outcome(log, result, warnings: list[str], error: str | None = None):
    """How a flow run ends, so the operator sees it in the run list and in `--watch`: Failed with the
    one-line reason when nothing usable was made (a direct call raises NothingUsable), Completed
    with the warnings as its message when something usable was made with them, else the result."""
    from prefect.states import Completed, Failed

    for w in warnings:
        log.warning(w)
    if error:
        log.error(error)
        return Failed(message=error, data=NothingUsable(error))
    if warnings:
        return Completed(message="; ".join(warnings), data=result)
    return result


def settings_or_refusal(model, given, log):
    """(a flow's settings, None): a deployment run's merged over the deployment's and checked in
    its first second (flows/settings.py `resolve`); or (None, the Failed state refusing the run)."""
    from realsr.flows.settings import SettingsError, resolve

    try:
        return resolve(model, given, log.info), None
    except SettingsError as e:
        return None, refused(log, e)


def refused(log, error: Exception):
    """A flow run's settings refused in its first second: Failed with the one-line reason (what
    `prefect deployment run --watch` prints), no traceback; a direct call raises `error`."""
    from prefect.states import Failed

    log.error(str(error))
    return Failed(message=str(error), data=error)
