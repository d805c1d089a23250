"""degrade-flow's report: the summary's markdown (the CLI prints it, the UI shows it as an
artifact with the banks' contact sheets) and the per-image table."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from realsr.flows.artifacts import image_markdown, publish, warning_markdown
from realsr.storage.degrade_records import PreprocessRecord
from realsr.storage.image_formats import RAW_NOTE
from realsr.storage.images import SRGB_NOTE


def colour_summary(records: list[PreprocessRecord]) -> dict:
    """How many photos were converted to sRGB from their ICC profile (by profile), and how many are RAW."""
    profiles: dict[str, int] = {}
    for r in records:
        for n in r.notes:
            if n.startswith(SRGB_NOTE):
                name = n.removeprefix(SRGB_NOTE).strip()
                profiles[name] = profiles.get(name, 0) + 1
    return {"converted_to_srgb": sum(profiles.values()), "profiles": profiles, "raw_sources": sum(1 for r in records if RAW_NOTE in r.notes)}


def colour_line(c: dict) -> str:
    line = f"- colour: {c['converted_to_srgb']} photo(s) converted to sRGB from their ICC profile" + (
        " (" + ", ".join(f"{k}: {v}" for k, v in sorted(c["profiles"].items())) + ")" if c["profiles"] else ""
    )
    if c["raw_sources"]:
        line += f"; {c['raw_sources']} RAW (DNG) file(s) as clean HR sources only (no noise patches, no kernel)"
    return line


def jpeg_line(j: dict) -> str:
    if not j["jpeg_sources"]:
        return f"- JPEG sources: none ({j['other_sources']} other): training adds no JPEG step"
    return f"- JPEG sources: {j['jpeg_sources']} (median quality {j['median_quality']}; training re-compresses at each photo's own), {j['other_sources']} other"


def summary_markdown(s: dict) -> str:
    lines = [
        f"# degrade-flow: {s['run_dir']}",
        "",
        *([warning_markdown(s.get("warnings", []), s.get("error"))] if s.get("warnings") or s.get("error") else []),
        f"- sources: {s['sources']} ({s['processed']} processed, {s['cached']} from earlier runs, {len(s['skipped'])} skipped)",
        *(["- sent to workers: " + ", ".join(f"{k} {v}" for k, v in s["worked_on"].items())] if "worked_on" in s else []),
        f"- kernel bank: `{s['kernel_bank']['path']}`: "
        + ", ".join(f"{sc} {c['valid']} valid of {c['kernels']}" for sc, c in s["kernel_bank"]["counts"].items()),
        f"- noise bank: `{s['noise_bank']['path']}` {s['noise_bank']['count']} patches, {s['noise_bank']['rejected']} candidates rejected",
        *([f"- **WARNING: {s['noise_bank']['warning']}**"] if s["noise_bank"].get("warning") else []),
        f"- pairs: {s['pairs']['pairs']} in `{s['pairs']['path']}`",
        *([jpeg_line(s["jpeg"])] if s.get("jpeg") else []),
        *([colour_line(s["colour"])] if s.get("colour") else []),
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in s["timings_s"].items()],
    ]
    if s["skipped"]:
        lines += ["", "## Skipped", "", *[f"- `{x['source']}`: {x['reason']}" for x in s["skipped"]]]
    if s.get("kernel_failures"):
        lines += [
            "",
            "## No kernel estimated (the image still gives noise and pairs)",
            "",
            *[f"- `{x['source']}`: {x['reason']}" for x in s["kernel_failures"]],
        ]
    if s["kernel_bank"].get("fallbacks"):
        lines += ["", "## KernelGAN failed: the bicubic kernel stands in", "", *[f"- `{x['source']}`: {x['reason']}" for x in s["kernel_bank"]["fallbacks"]]]
    if s["kernel_bank"].get("rejected"):
        lines += ["", "## Kernels left out of the bank", "", *[f"- x{x['scale']} `{x['source']}`: {x['reason']}" for x in s["kernel_bank"]["rejected"]]]
    if s["too_small_for_pairs"]:
        lines += ["", "## No pairs (clean HR smaller than a pair patch)", "", *[f"- `{x}`" for x in s["too_small_for_pairs"]]]
    if s["converted"]:
        lines += ["", "## Converted on input", "", *[f"- `{x['source']}`: {'; '.join(x['notes'])}" for x in s["converted"]]]
    if s["ignored_files"]:
        lines += ["", "## Left out of the source folder", "", *[f"- `{x['file']}`: {x['reason']}" for x in s["ignored_files"]]]
    return "\n".join(lines) + "\n"


def artifact_rows(records: list[PreprocessRecord]) -> list[dict]:
    """The per-image table of the flow's artifact."""
    return [
        {
            "source": r.source,
            "clean_hr": "x".join(map(str, r.hr_size)),
            "noise_patches": r.noise_count,
            "rejected": r.noise_rejected,
            "cached": r.cached,
            "seconds": r.seconds,
        }
        for r in records
    ]


def publish_summary(summary: dict, rows: list[dict], sheets: dict[str, Path]) -> None:
    pictures = [image_markdown(path, title) for title, path in sheets.items()]
    publish(
        get_run_logger(),
        "\n".join([summary_markdown(summary), *pictures]),
        "degrade-summary",
        "degrade-flow run summary, kernel and noise contact sheets",
        rows,
        "degrade-images",
        "per-image clean-up and noise extraction",
    )
