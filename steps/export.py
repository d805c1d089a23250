"""`realsr export MODEL`: the generator as ONNX, ncnn and safetensors, each proven before it is kept.

Every file is written into a temporary folder, then run by its own runtime (onnxruntime, the
ncnn package, the product's loader) on the verification crops and compared with what
`realsr upscale` makes of the same crops (fp32, whole, channels_last). Within 1/255 on every
8-bit output sample it is copied into OUTDIR (atomically); otherwise it is refused with the
difference and nothing of it is kept. Files already in OUTDIR are replaced only with `force`,
and that is checked before any work. The model card (OpenModelDB's fields) and a contact
sheet go beside the kept files.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from realsr.models.tiling import to_dtype, upscale
from realsr.steps import export_formats as fmt
from realsr.steps.model_card import model_card, pipeline_of, safe_name, train_dir, write_contact_sheet
from realsr.storage.atomic import write_bytes, write_json
from realsr.storage.images import list_images, read_image
from realsr.storage.model_files import canonical_rrdb_keys, generator_from_state, load_generator, read_checkpoint, resolve_weights
from realsr.storage.weights import CATALOG

FORMATS = ("onnx", "ncnn", "safetensors")
TOLERANCE = 1  # 8-bit levels: an export's output may differ from the product's by 1/255 at most
VERIFY_CROP = 64  # px per side of each verification crop (the full x4plus: about 1 s per crop and runtime on 2 cores)
VERIFY_COUNT = 3  # crops at most
HALF_CROP = 16  # px: the fp16 export's reference runs in half precision, which torch runs ~100x slower on a CPU


@dataclass(frozen=True)
class ExportSpec:
    model: str  # a checkpoint path or a released name, as `realsr upscale --model` takes
    out: Path
    formats: tuple[str, ...] = FORMATS
    fp16: bool = False  # also NAME.fp16.onnx; ncnn weights stored in fp16
    opset: int = 17
    verify_images: Path | None = None
    force: bool = False
    name: str | None = None


@dataclass
class ExportReport:
    kept: list[dict] = field(default_factory=list)  # {format, files, max_diff}
    refused: list[dict] = field(default_factory=list)  # {format, reason}
    card: Path | None = None
    sheet: Path | None = None


def default_name(model: str, path: Path) -> str:
    """A released name as it is; a pipeline's trained.pth by its folder; else the file's stem."""
    if model in CATALOG:
        return model
    pdir = pipeline_of(path)
    return safe_name(f"{pdir.root.name}-x4" if pdir else path.stem)


def targets(name: str, formats: tuple[str, ...], fp16: bool) -> dict[str, list[str]]:
    """The file names each export writes (`onnx-fp16` with fp16)."""
    names = {"onnx": [f"{name}.onnx"], "onnx-fp16": [f"{name}.fp16.onnx"], "ncnn": [f"{name}.param", f"{name}.bin"], "safetensors": [f"{name}.safetensors"]}
    wanted = [f for f in FORMATS if f in formats]
    if fp16 and "onnx" in wanted:
        wanted.insert(wanted.index("onnx") + 1, "onnx-fp16")
    return {f: names[f] for f in wanted}


def _centre(rgb: np.ndarray, size: int = VERIFY_CROP) -> np.ndarray:
    h, w = rgb.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(rgb[y : y + size, x : x + size, :3], np.float32)


def verification_images(model_path: Path, folder: Path | None) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """(where they come from, [(name, (h, w, 3) float32 crop)]): the first photos of `folder`;
    else a pipeline's held-out validation crops (its own camera's photos, degraded as it
    trained); else seeded synthetic camera photos, the demo's `realsr sample`."""
    if folder is None and (pdir := pipeline_of(model_path)) and (tdir := train_dir(pdir)) and (tdir / "val" / "lr").is_dir():
        folder = tdir / "val" / "lr"
    if folder is not None:
        paths, _ = list_images(Path(folder))
        if not paths:
            raise FileNotFoundError(f"{folder}: no images to verify the exports on")
        return str(folder), [(p.name, _centre(read_image(p, upright=True).rgb)) for p in paths[:VERIFY_COUNT]]
    from realsr.models.synthetic import camera_photo

    return "synthetic camera photos (realsr sample, seeds 0-1)", [(f"sample seed {s}", _centre(camera_photo(s, 160, 208))) for s in (0, 1)]


def _to8(rgb: np.ndarray) -> np.ndarray:
    return to_dtype(np.clip(rgb, 0, 1), np.uint8)


def export_model(spec: ExportSpec, log: Callable[[str], None] = print) -> ExportReport:
    """The driver: refuse early (unknown format, files in the way, no images), then export,
    verify and keep each format; the card and sheet describe what was kept."""
    bad = [f for f in spec.formats if f not in FORMATS]
    if bad or not spec.formats:
        raise ValueError(f"unknown export format {', '.join(bad) or '(none)'} (known: {', '.join(FORMATS)})")
    source = resolve_weights(spec.model)
    state, meta = read_checkpoint(source)
    gen = generator_from_state(state, source)
    name = safe_name(spec.name) if spec.name else default_name(spec.model, source)
    out = Path(spec.out)
    plan = targets(name, spec.formats, spec.fp16)
    in_the_way = [out / n for files in [*plan.values(), [f"{name}.json", f"{name}.sheet.png"]] for n in files if (out / n).exists()]
    if in_the_way and not spec.force:
        raise FileExistsError(f"{in_the_way[0]} exists{f' (and {len(in_the_way) - 1} more)' if len(in_the_way) > 1 else ''}: not replaced without --force")
    where, images = verification_images(source, spec.verify_images)
    log(f"{gen.describe()}: exporting {', '.join(plan)} as {out / name}.*; verifying on {len(images)} crop(s) of {where}")

    net = gen.model.float().eval().to(memory_format=torch.channels_last)
    product = [upscale(net, rgb, gen.scale, 0, channels_last=True, out_dtype=np.uint8) for _, rgb in images]  # what `realsr upscale` writes (fp32)
    report = ExportReport()
    sheet_outputs = {"realsr upscale": product[0]}
    checks = []
    with tempfile.TemporaryDirectory(prefix="realsr-export-") as tmp:
        for kind, files in plan.items():
            _export_one(kind, files, Path(tmp), out, gen, state, meta, source, spec, (where, images, product), report, checks, sheet_outputs, log)
    if report.kept:
        report.sheet = out / f"{name}.sheet.png"
        write_contact_sheet(report.sheet, images[0][1], sheet_outputs, gen.scale)
        kept_files = [Path(f) for k in report.kept for f in k["files"]]
        card = model_card(
            name,
            spec.model,
            source,
            gen,
            meta,
            kept_files,
            [c for c in checks if any(c["format"] == k["format"] for k in report.kept)],
            report.sheet,
            report.refused,
        )
        report.card = out / f"{name}.json"
        write_json(report.card, card)
    return report


def _export_one(
    kind, files, tmp: Path, out: Path, gen, state, meta, source, spec, verify, report: ExportReport, checks: list, sheet_outputs: dict, log
) -> None:
    """Write one format in `tmp`, run it in its own runtime on the crops and keep it in `out`
    only within TOLERANCE of the product's output; else say why in `report.refused`."""
    where, images, product = verify
    paths = [tmp / f for f in files]
    try:
        runner = _write(kind, gen, state, meta, source, paths, spec)
        crops, refs = (images, product) if kind != "onnx-fp16" else half_reference(gen, images, log)
        outs = [_to8(runner(rgb)) for _, rgb in crops]
        diffs = [int(np.abs(o.astype(np.int16) - ref).max()) for o, ref in zip(outs, refs)]
    except (fmt.ExportError, RuntimeError, ValueError, OSError) as e:
        report.refused.append({"format": kind, "reason": str(e).splitlines()[0] if str(e) else type(e).__name__})
        return
    worst = max(diffs)
    against = "realsr upscale's" if kind != "onnx-fp16" else "realsr upscale's in half precision (its default on a GPU)"
    per_image = dict(zip((n for n, _ in crops), diffs))
    checks.append({"format": kind, "files": files, "max_abs_diff_255": worst, "per_image": per_image, "images": where, "against": against})
    if worst > TOLERANCE:
        reason = f"its output differs from {against} by {worst}/255 (max over {len(crops)} crops; at most {TOLERANCE}/255 allowed): not kept"
        report.refused.append({"format": kind, "reason": reason, "max_diff": worst})
        return
    if kind != "onnx-fp16":
        sheet_outputs[kind] = outs[0]
    for p in paths:  # copied whole, atomically; the temporary copy goes with the folder
        write_bytes(out / p.name, p.read_bytes())
    report.kept.append({"format": kind, "files": [str(out / f) for f in files], "max_diff": worst})
    log(f"kept {kind}: {', '.join(files)} (max |diff| vs {against} output {worst}/255 on {len(crops)} crop(s))")


def half_reference(gen, images: list[tuple[str, np.ndarray]], log: Callable[[str], None]) -> tuple[list, list[np.ndarray]]:
    """The fp16 export's reference: the product's own half-precision output, what `realsr
    upscale` writes on a GPU (fp16 is its default there). fp16 arithmetic is not fp32's: against
    the fp32 output the x4plus's fp16 export differs by 3/255, and so does the product's own fp16
    (BENCHMARKS.md). On a CPU, torch runs fp16 convolutions about 100x slower than fp32, so the
    check there is one centre crop of HALF_CROP px."""
    import copy

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    half = copy.deepcopy(gen.model).half().eval().to(dev)
    crops = images if dev.type == "cuda" else [(f"{n} ({HALF_CROP} px centre)", _centre(rgb, HALF_CROP)) for n, rgb in images[:1]]
    log(f"fp16 reference: realsr upscale in half precision on {dev} ({len(crops)} crop(s))")
    return crops, [upscale(half, rgb, gen.scale, 0, device=dev, dtype=torch.float16, out_dtype=np.uint8) for _, rgb in crops]


def _write(kind: str, gen, state: dict, meta: dict, source: Path, paths: list[Path], spec: ExportSpec) -> Callable[[np.ndarray], np.ndarray]:
    """Write one export into `paths`; returns its runner (its own runtime, this machine's threads)."""
    threads = torch.get_num_threads()
    if kind in ("onnx", "onnx-fp16"):
        fmt.write_onnx(gen.model, paths[0], spec.opset, fp16=kind == "onnx-fp16")
        return fmt.onnx_session(paths[0], threads)
    if kind == "ncnn":
        fmt.write_ncnn(gen.model, paths[0], paths[1], fp16=spec.fp16)
        return fmt.ncnn_session(paths[0], paths[1], threads)
    tensors = canonical_rrdb_keys(state) if gen.arch == "RRDBNet" else state
    c = gen.config
    metadata = {"format": "pt", "architecture": "ESRGAN (RRDBNet)" if gen.arch == "RRDBNet" else gen.arch, "scale": str(gen.scale), "source": source.name}
    if c:
        metadata.update({k: str(v) for k, v in c.as_dict().items()})
    if meta.get("init"):
        metadata["init"] = str(meta["init"])
    fmt.write_safetensors(tensors, paths[0], metadata)
    back, _ = read_checkpoint(paths[0])
    if back.keys() != tensors.keys() or any(not torch.equal(back[k], tensors[k]) for k in tensors):
        raise fmt.ExportError(f"{paths[0].name}: the tensors read back are not the ones written")
    reloaded = load_generator(paths[0]).model.float().eval().to(memory_format=torch.channels_last)
    return lambda rgb: upscale(reloaded, rgb, gen.scale, 0, channels_last=True)
