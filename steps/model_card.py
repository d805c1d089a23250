"""`realsr export`'s model card: OpenModelDB's fields (open-model-database `src/lib/schema`:
name, author, license, tags, description, date, architecture, size, scale, in/out channels,
resources with sha256 and size, the training fields), filled from what the product recorded:
the checkpoint's `realsr` entry (its init), and, for a pipeline's `trained.pth`, the pipeline
folder (training summary and settings, the photos it learnt from, the evaluation table).
Beside it, a contact sheet: input | the product's output | each kept export's output.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import cv2
import numpy as np

from realsr.steps.pipeline import RECORD, PipelineDir
from realsr.steps.sheets import grid, label, write_sheet
from realsr.storage.atomic import file_sha256, read_json
from realsr.storage.model_files import LoadedGenerator
from realsr.storage.train_checkpoints import load_checkpoint, saved_iterations
from realsr.storage.weights import CATALOG

RESOURCE = {  # OpenModelDB's resource type and platform per exported file
    ".onnx": ("onnx", "onnx"),
    ".param": ("ncnn", "ncnn"),
    ".bin": ("ncnn", "ncnn"),
    ".safetensors": ("safetensors", "pytorch"),
    ".pth": ("pth", "pytorch"),
}


def pipeline_of(model: Path) -> PipelineDir | None:
    """The pipeline folder a `trained.pth` was published into (it holds pipeline.json), else None."""
    model = Path(model).resolve()
    return PipelineDir(model.parent) if model.name == "trained.pth" and (model.parent / RECORD).is_file() else None


def train_dir(pdir: PipelineDir) -> Path | None:
    out = read_json(pdir.record).get("stages", {}).get("train", {}).get("out")
    return Path(out) if out and Path(out).is_dir() else None


def _json(path: Path) -> dict:
    try:
        return read_json(path) if path.is_file() else {}
    except (ValueError, OSError):
        return {}


def training_facts(pdir: PipelineDir) -> dict:
    """OpenModelDB's training fields and realsr's own record of a pipeline run, as far as its folder tells."""
    out: dict = {}
    tdir = train_dir(pdir)
    summary = _json(tdir / "summary.json") if tdir else {}
    settings: dict = {}
    if tdir and (its := saved_iterations(tdir)):
        settings = load_checkpoint(tdir, its[0])[0].get("meta", {}).get("settings", {})
    if summary.get("iterations"):
        out["trainingIterations"] = int(summary["iterations"])
    if settings.get("batch_size"):
        out["trainingBatchSize"] = int(settings["batch_size"])
    if settings.get("hr_size"):
        out["trainingHRSize"] = int(settings["hr_size"])
    out["trainingOTF"] = True  # pairs are degraded on the fly, from the camera's kernels and noise
    piped = _json(pdir.root / "summary.json")
    photos = piped.get("degrade", {}).get("processed")
    n_train, n_held = summary.get("training_images"), summary.get("held_out_images")
    if n_train:
        out["datasetSize"] = int(n_train)
    out["dataset"] = (
        f"{photos if photos is not None else 'the'} photos of one camera (realsr pipeline {pdir.root.name}): its blur kernels (KernelGAN) and noise "
        f"patches were estimated from them and the clean-up of each photo degraded with them on the fly; {n_train or '?'} images trained, "
        f"{n_held or 0} held out for evaluation"
    )
    table = pdir.eval / "results.md"
    out["realsr_training"] = {
        "settings": settings,
        "summary": {k: summary.get(k) for k in ("iterations", "generator", "device", "precision", "seconds", "best", "validation")},
    }
    if table.is_file():
        out["realsr_evaluation"] = table.read_text()
    return out


def licence_of(model: str, meta: dict) -> tuple[str | None, str]:
    """(SPDX id, the words) of the licence that binds the weights: a released generator's own,
    or the one of the released generator a fine-tune started from (its terms carry over)."""
    name = model if model in CATALOG else meta.get("init", "")
    if name in CATALOG:
        words = CATALOG[name].licence
        return words.split(" (")[0], words + ("" if name == model else f", the licence of the init {name}")
    return None, "unknown: the checkpoint records no released init; the author of its training data and init decides"


def resource(path: Path) -> dict:
    kind, platform = RESOURCE.get(path.suffix, (path.suffix.lstrip("."), "unknown"))
    return {"type": kind, "platform": platform, "file": path.name, "size": path.stat().st_size, "sha256": file_sha256(path), "urls": []}


def model_card(
    name: str, model: str, source: Path, gen: LoadedGenerator, meta: dict, files: list[Path], checks: list[dict], sheet: Path | None, refused: list[dict] = ()
) -> dict:
    """The card's dict: OpenModelDB's fields first, then `realsr` with what only this product records."""
    spdx, words = licence_of(model, meta)
    c = gen.config
    init = meta.get("init") or None
    card = {
        "name": name,
        "author": _owner(CATALOG[model].licence) if model in CATALOG else "unknown",
        "license": spdx,
        "tags": ["photo", "real-world", "general-upscaler"],
        "description": "",
        "date": datetime.date.fromtimestamp(source.stat().st_mtime).isoformat(),
        "architecture": "esrgan" if gen.arch == "RRDBNet" else gen.arch.lower(),
        "size": [f"{c.num_feat}nf", f"{c.num_block}nb"] if c else None,
        "scale": int(gen.scale),
        "inputChannels": c.num_in_ch if c else 3,
        "outputChannels": c.num_out_ch if c else 3,
        "resources": [resource(f) for f in files],
        "images": [{"type": "standalone", "url": sheet.name, "caption": "input | realsr upscale | each export (verification crop)"}] if sheet else [],
    }
    if init:
        card["pretrainedModelG"] = Path(init).stem if Path(init).is_absolute() else init
    pdir = pipeline_of(source)
    facts = training_facts(pdir) if pdir else {}
    card.update({k: v for k, v in facts.items() if not k.startswith("realsr_")})
    lines = [
        (
            f"Fine-tuned by realsr-pipeline (RealSR: real-world degradations estimated from the photos) from {init}."
            if init
            else f"Exported by realsr-pipeline from {source.name}."
        )
    ]
    lines.append(f"Licence: {words}.")
    if facts.get("dataset"):
        lines.append(f"Training data: {facts['dataset']}.")
    if facts.get("realsr_evaluation"):
        lines += ["", "Evaluation on the held-out photos (realsr evaluate):", "", facts["realsr_evaluation"].strip()]
    lines += ["", "Every file was run in its own runtime before it was kept; its output matched `realsr upscale` within 1/255 (see realsr.verification)."]
    card["description"] = "\n".join(lines)
    card["realsr"] = {
        "source": str(source),
        "source_sha256": file_sha256(source),
        "recorded": meta,
        "licence": words,
        "verification": checks,
        "refused": list(refused),
        **({"training": facts["realsr_training"]} if "realsr_training" in facts else {}),
        **({"evaluation": facts["realsr_evaluation"]} if "realsr_evaluation" in facts else {}),
    }
    return card


def _owner(licence: str) -> str:
    """The publisher a catalog licence names ("BSD-3-Clause (xinntao/Real-ESRGAN)" -> xinntao)."""
    m = re.search(r"\(([^/)]+)/", licence)
    return m.group(1) if m else "unknown"


def write_contact_sheet(path: Path, crop: np.ndarray, outputs: dict[str, np.ndarray], scale: int) -> None:
    """One row: the input crop (nearest-enlarged to the output size) | each output, labelled."""
    big = cv2.resize(np.rint(crop * 255).astype(np.uint8), (crop.shape[1] * scale, crop.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    tiles = [label(np.ascontiguousarray(big[..., ::-1]), "input (nearest)")]
    tiles += [label(np.ascontiguousarray(o[..., ::-1]), title) for title, o in outputs.items()]
    write_sheet(path, grid(tiles, len(tiles)))


def safe_name(text: str) -> str:
    """A file-name stem from a model name: letters, digits, '.', '_', '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"
