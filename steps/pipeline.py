"""realsr-pipeline's steps: when a stage is current, and the files that chain the stages.

PIPELINE_DIR/              a folder, or a URL (each stage then mirrors what it needs itself, on
                           whichever machine runs it; this module reads and writes only the
                           small records, where they are: storage/locations.py)
  pipeline.json            the key each stage last completed with (a stage whose key is
                           unchanged and whose output is there is skipped)
  run/                     degrade-flow's run folder
  train/<key>/             train-flow's folder for one (degrade output, train settings) pair:
                           new photos or new settings train afresh, a killed run resumes
  trained.pth              the newest trained generator (a copy: the name a user upscales with,
                           and the `trained` row of the tables)
  eval/                    evaluate-flow on the held-out photos' crops (train/<key>/val)
  eval-test/               evaluate-flow on the user's own LR/HR test folder, when given
  summary.json             the last run's summary
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from realsr.models.errors import InputError
from realsr.storage.images import is_image_name, list_images
from realsr.storage.locations import exists, join, read_json_at, write_json_at
from realsr.storage.remote import Mirror, copy_file, filesystem, is_url, stamp
from realsr.storage.run_dir import TOOL

STAGES = ("degrade", "train", "evaluate")
RECORD = "pipeline.json"


@dataclass(frozen=True)
class PipelineDir:
    root: Path | str  # a folder, or a URL

    def at(self, *parts: str) -> Path | str:
        return join(self.root, *parts)

    @property
    def run(self) -> Path | str:
        return self.at("run")

    def train(self, key: str) -> Path | str:
        return self.at("train", key[:12])

    @property
    def model(self) -> Path | str:
        return self.at("trained.pth")

    @property
    def eval(self) -> Path | str:
        return self.at("eval")

    @property
    def eval_test(self) -> Path | str:
        return self.at("eval-test")

    @property
    def record(self) -> Path | str:
        return self.at(RECORD)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def source_listing(source: Path | str) -> list[list]:
    """Each source photo's path, size and modification time: what a new, changed or removed
    photo changes (a stat per file: 1,000 photos cost milliseconds). At a URL: each photo's
    path and version stamp (ETag), from one listing."""
    if is_url(source):
        files = Mirror(str(source), "sources").remote_files(is_image_name)
        return [[rel, info.get("size"), stamp(info)] for rel, info in sorted(files.items())]
    images, _ = list_images(Path(source).resolve())
    rows = []
    for p in images:
        st = p.stat()
        rows.append([str(p), st.st_size, st.st_mtime_ns])
    return rows


# Settings that choose how the work runs, not what it makes (the same draws; equal to rounding):
# changing one, or its appearing in an upgrade, reruns no stage (a KernelGAN engine or the place
# training LR are degraded would otherwise retrain every pipeline: hours)
HOW_NOT_WHAT = ("kernelgan_engine", "degrade_on")


def degrade_key(settings: dict, source: Path | str) -> str:
    return digest({"settings": {k: v for k, v in settings.items() if k not in HOW_NOT_WHAT}, "sources": source_listing(source)})


def train_key(settings: dict, degrade: str) -> str:
    """Training's output depends on its settings and on the degrade output it reads; paths
    derived from the key (run_dir, out) are left out so the key can name the folder."""
    return digest({"settings": {k: v for k, v in settings.items() if k not in ("run_dir", "out", "resume", *HOW_NOT_WHAT)}, "degrade": degrade})


def evaluate_key(models: list[str], train: str, lr: Path | str, hr: Path | str | None) -> str:
    """An evaluation's output depends on the models (a checkpoint by its file's version; the
    trained one by its training's key), and on the test photos."""

    def version(model: str):
        if is_url(model):
            fs, path = filesystem(model)
            return [model, stamp(fs.info(path))]
        if Path(model).is_file():
            st = os.stat(model)
            return [model, st.st_size, st.st_mtime_ns]
        return [model]  # a released model's name: its weights are pinned by digest

    return digest({"models": [version(m) for m in models], "train": train, "lr": folder_listing(lr), "hr": folder_listing(hr) if hr else None})


def folder_listing(folder: Path | str) -> list[list]:
    """The images of a test folder, by name and version (names relative: the held-out crops of
    the same training are the same set wherever they are mirrored)."""
    root = str(folder).rstrip("/") if is_url(folder) else str(Path(folder).resolve())
    return [[str(name).removeprefix(root), *rest] for name, *rest in source_listing(folder)]


def read_stages(pdir: PipelineDir) -> dict:
    try:
        return read_json_at(pdir.record).get("stages", {})
    except FileNotFoundError:
        return {}
    except (ValueError, OSError, AttributeError) as e:
        raise InputError(f"{pdir.record}: unreadable pipeline record ({e}); delete it to rerun every stage") from e


def record_stage(pdir: PipelineDir, stage: str, key: str, **info) -> None:
    stages = read_stages(pdir)
    stages[stage] = {"key": key, **info}
    write_json_at(pdir.record, {"tool": TOOL, "stages": stages})


def is_current(pdir: PipelineDir, stage: str, key: str, output: Path | str) -> bool:
    """The stage last completed with this key and its output is still there."""
    return read_stages(pdir).get(stage, {}).get("key") == key and exists(output)


def train_done(out: Path | str, iterations: int) -> bool:
    """A training folder that reached its last iteration (its summary says so)."""
    try:
        s = read_json_at(join(out, "summary.json"))
    except (FileNotFoundError, ValueError, OSError):
        return False
    return isinstance(s, dict) and s.get("iterations") == iterations and exists(s.get("latest") or "-")


def publish_model(latest: Path | str, pdir: PipelineDir) -> Path | str:
    """Copy the trained generator to PIPELINE_DIR/trained.pth, whole (a reader never sees half;
    at a URL the store copies it, nothing is downloaded)."""
    copy_file(latest, pdir.model)
    return pdir.model
