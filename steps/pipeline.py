"""realsr-pipeline's steps: when a stage is current, and the files that chain the stages.

PIPELINE_DIR/
  pipeline.json            the key each stage last completed with (a stage whose key is
                           unchanged and whose output is there is skipped)
  run/                     degrade-flow's run folder
  train/<key>/             train-flow's folder for one (degrade output, train settings) pair:
                           new photos or new settings train afresh, a killed run resumes
  trained.pth              the newest trained generator (a copy: the name a user upscales with,
                           and the `trained` row of the tables)
  eval/                    evaluate-flow on the held-out photos' crops (train/<key>/val)
  eval-test/               evaluate-flow on the user's own LR/HR test folder, when given
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from realsr.models.errors import InputError
from realsr.storage.atomic import read_json, write_bytes, write_json
from realsr.storage.images import is_image_name, list_images
from realsr.storage.remote import Mirror, is_url, stamp
from realsr.storage.run_dir import TOOL

STAGES = ("degrade", "train", "evaluate")
RECORD = "pipeline.json"


@dataclass(frozen=True)
class PipelineDir:
    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    def train(self, key: str) -> Path:
        return self.root / "train" / key[:12]

    @property
    def model(self) -> Path:
        return self.root / "trained.pth"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_test(self) -> Path:
        return self.root / "eval-test"

    @property
    def record(self) -> Path:
        return self.root / RECORD


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


def degrade_key(settings: dict, source: Path | str) -> str:
    return digest({"settings": settings, "sources": source_listing(source)})


def train_key(settings: dict, degrade: str) -> str:
    """Training's output depends on its settings and on the degrade output it reads; paths
    derived from the key (run_dir, out) are left out so the key can name the folder."""
    return digest({"settings": {k: v for k, v in settings.items() if k not in ("run_dir", "out", "resume")}, "degrade": degrade})


def read_stages(pdir: PipelineDir) -> dict:
    if not pdir.record.exists():
        return {}
    try:
        return read_json(pdir.record).get("stages", {})
    except (ValueError, OSError) as e:
        raise InputError(f"{pdir.record}: unreadable pipeline record ({e}); delete it to rerun every stage") from e


def record_stage(pdir: PipelineDir, stage: str, key: str, **info) -> None:
    stages = read_stages(pdir)
    stages[stage] = {"key": key, **info}
    write_json(pdir.record, {"tool": TOOL, "stages": stages})


def is_current(pdir: PipelineDir, stage: str, key: str, output: Path) -> bool:
    """The stage last completed with this key and its output is still there."""
    return read_stages(pdir).get(stage, {}).get("key") == key and output.exists()


def train_done(out: Path, iterations: int) -> bool:
    """A training folder that reached its last iteration (its summary says so)."""
    summary = out / "summary.json"
    if not summary.exists():
        return False
    try:
        s = read_json(summary)
    except (ValueError, OSError):
        return False
    return s.get("iterations") == iterations and Path(s.get("latest", "")).exists()


def publish_model(latest: Path, pdir: PipelineDir) -> Path:
    """Copy the trained generator to PIPELINE_DIR/trained.pth (atomically: a reader never sees half)."""
    write_bytes(pdir.model, Path(latest).read_bytes())
    return pdir.model
