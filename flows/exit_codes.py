"""The exit-code rule every `realsr` command follows (flows/cli.py applies the rest of it).

    0    everything asked for was done (items found already done count as done)
    1    some items failed, the rest was done (the last lines list the failures)
    2    nothing was done: settings or inputs refused before work, every item failed, a full disk
    130  stopped by Ctrl-C, 143 by SIGTERM (flows/stopping.py)

A refusal is a `RealsrError` (models/errors.py), said in one line with its `exit_code` (2 unless
it says otherwise); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


def outcome(done: int, failed: int) -> int:
    """0, 1 or 2 for a command over items: `done` finished (or found finished), `failed` not."""
    if failed and not done:
        return 2
    return 1 if failed else 0


def failed_photos(summary: dict) -> list[str]:
    """A degrade summary's photos that failed or got no kernel of their own (a copy of another
    photo is left out by design, not a failure)."""
    return sorted({f["source"] for f in summary.get("skipped", []) + summary.get("kernel_failures", []) if not f["reason"].startswith("same content as ")})
