"""degrade-flow's records: what each stage writes, what a rerun reads, what training reads.

One typed class per record, each with its `VERSION` and a JSON round trip (`to_json` /
`from_json`), in storage because both flows read them: degrade-flow's steps write and reread the
stage records (`.work/<stage>/<key>.json`), train-flow reads the image index (`pairs/images.jsonl`).
Shapes written before a record was versioned (version 0) are migrated here, once, on read:

- a clean-up record without `jpeg` (before the quality was recorded): read from its source;
- a pairs record without `image` (before it kept the image's own fields): taken from its first
  pair; one without pairs cannot be, and is redone (cheap: nothing to write);
- a run folder without `images.jsonl`: one row per image from its first pair in the manifest.

A record this code cannot read (unreadable, fields missing, a newer version) is absent to
`load`: its stage reruns. The stage keys are hashes of the settings and the photo, never of a
record, so a record's shape can change without redoing any work.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from realsr.models.errors import RealsrError
from realsr.storage.images import BadImageError, jpeg_quality, read_bytes
from realsr.storage.run_dir import RunDir


class RecordError(RealsrError, ValueError):
    """A stored record this code cannot read (its stage reruns)."""


def recorded_quality(d: dict, key: str) -> tuple[int | None, str | None]:
    """A source's JPEG quality as `d[key]` holds it (None: not a JPEG; a dict from `jpeg_quality`
    or its number), and a note when it had to be read from `d["source"]` and could not be."""
    if key in d:
        q = d[key]
        return (q.get("quality") if isinstance(q, dict) else q), None
    try:
        return (jpeg_quality(read_bytes(d["source"])) or {}).get("quality"), None
    except BadImageError:
        return None, f"source {d['source']} not readable, JPEG quality unknown (no re-compression)"


class _Record:
    """A dataclass's JSON round trip: its fields (less the `_TRANSIENT` ones) and its version."""

    VERSION: ClassVar[int] = 1
    _TRANSIENT: ClassVar[tuple[str, ...]] = ("cached", "note")
    _VERSIONED: ClassVar[bool] = True  # the stage records say their version; the JSONL rows do not

    def to_json(self) -> dict:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in self._TRANSIENT}
        return {"version": self.VERSION, **out} if self._VERSIONED else out

    @classmethod
    def _build(cls, d: Any, **extra):
        if not isinstance(d, dict):
            raise RecordError(f"{cls.__name__}: not a JSON object")
        if d.get("version", 0) > cls.VERSION:
            raise RecordError(f"{cls.__name__}: version {d['version']} is newer than this code's {cls.VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{**{k: v for k, v in d.items() if k in names}, **extra})
        except TypeError as e:  # a field missing
            raise RecordError(f"{cls.__name__}: {e}") from None


def _plain(v):
    if isinstance(v, _Record):
        return v.to_json()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class _StageRecord(_Record):
    STAGE: ClassVar[str]

    @classmethod
    def load(cls, run: RunDir, key: str, **kw):
        """The stage's record of `key`, or None when absent or unreadable (then the stage reruns)."""
        d = run.load_record(cls.STAGE, key)
        if d is None:
            return None
        try:
            return cls.from_json(d, **kw)
        except RecordError:
            return None

    def save(self, run: RunDir) -> None:
        run.save_record(self.STAGE, self.key, self.to_json())


@dataclass(frozen=True, kw_only=True)
class PreprocessRecord(_StageRecord):
    """One photo's clean-up and noise extraction (`steps.degrade.prepare_source`)."""

    STAGE: ClassVar[str] = "preprocess"
    key: str
    source: str
    sha256: str
    name: str  # the clean HR's stem: <source stem>-<sha8>
    source_size: list[int]  # [width, height]
    bit_depth: int
    jpeg: dict | None  # {"quality", "table_error"} of a JPEG source (storage.images.jpeg_quality), None otherwise
    notes: list[str] = field(default_factory=list)  # conversions on input (profile, alpha, depth, ...)
    clean_hr: str
    hr_size: list[int] | None = None  # [width, height] of the clean HR
    noise_count: int
    noise_rejected: int
    noise_level: dict | None = None  # the adaptive rule's estimate of the photo's noise level
    seconds: float
    cached: bool = False  # transient: done by an earlier run

    @property
    def jpeg_quality(self) -> int | None:
        return self.jpeg.get("quality") if isinstance(self.jpeg, dict) else self.jpeg

    @classmethod
    def from_json(cls, d: dict, **extra) -> PreprocessRecord:
        """`extra`: fields that replace the stored ones (the photo's path as it is now, `cached`)."""
        if not isinstance(d, dict):
            raise RecordError("PreprocessRecord: not a JSON object")
        d = {**d, **extra}
        if "jpeg" not in d and "source" in d:  # version 0, before the quality was recorded
            q, _ = recorded_quality(d, "jpeg")
            d["jpeg"] = None if q is None else {"quality": q}
        return cls._build(d)


@dataclass(frozen=True, kw_only=True)
class KernelRecord(_StageRecord):
    """One photo's KernelGAN estimate (`steps.degrade_kernels.estimate_source_kernels`); its
    kernel is staged beside it (`RunDir.staged_kernel`)."""

    STAGE: ClassVar[str] = "kernelgan"
    key: str
    source: str
    sha256: str
    losses: dict = field(default_factory=dict)
    device: str = ""
    seconds: float = 0.0
    iterations: int | None = None
    seed: int | None = None
    fallback: str | None = None  # why the bicubic kernel stands in, when the estimate failed
    spread: float | None = None  # the seeds' spread (`SPREAD_FLAG`), None with one seed or a fallback
    cached: bool = False

    @classmethod
    def from_json(cls, d: dict, **extra) -> KernelRecord:
        return cls._build(d, **extra)


@dataclass(frozen=True, kw_only=True)
class PairRow(_Record):
    """One HR/LR pair: a line of `pairs/manifest.jsonl`."""

    _VERSIONED: ClassVar[bool] = False
    name: str
    source: str
    source_sha256: str
    hr_position: list[int]  # [y, x] in the clean HR
    kernel_index: int
    kernel_id: str
    noise_id: str = ""  # "" when no noise was added
    noise_index: int | list[int] = -1  # a list for a mosaic of tiles
    noise_offset: list[int] = field(default_factory=lambda: [0, 0])
    source_jpeg_quality: int | None = None
    scale: int
    seed: int

    @classmethod
    def from_json(cls, d: dict) -> PairRow:
        return cls._build(d)


@dataclass(frozen=True, kw_only=True)
class ImageInfo(_Record):
    """What training needs of one clean HR image: its kernel and its source's JPEG quality."""

    _VERSIONED: ClassVar[bool] = False
    kernel_index: int
    kernel_id: str
    source_jpeg_quality: int | None
    hr_size: list[int] | None = None  # [width, height]

    @classmethod
    def from_json(cls, d: dict) -> ImageInfo:
        return cls._build(d)


@dataclass(frozen=True, kw_only=True)
class PairsRecord(_StageRecord):
    """One image's pairs (`steps.degrade.make_pairs`): its own fields and a row per pair."""

    STAGE: ClassVar[str] = "pairs"
    key: str
    name: str
    source: str
    image: ImageInfo
    rows: list[PairRow]
    seconds: float = 0.0
    cached: bool = False

    @classmethod
    def from_json(cls, d: dict, hr_size: list[int] | None = None, **extra) -> PairsRecord:
        """`hr_size`: the image's clean HR size, for a version 0 record (it did not keep it)."""
        if not isinstance(d, dict):
            raise RecordError("PairsRecord: not a JSON object")
        rows = [PairRow.from_json(r) for r in d.get("rows", [])]
        if "image" in d:
            image = ImageInfo.from_json(d["image"])
        elif rows:  # version 0: the image's fields from its first pair
            image = ImageInfo(kernel_index=rows[0].kernel_index, kernel_id=rows[0].kernel_id, source_jpeg_quality=rows[0].source_jpeg_quality, hr_size=hr_size)
        else:
            raise RecordError("PairsRecord: version 0 without pairs (redone)")
        return cls._build({**d, "image": image, "rows": rows}, **extra)

    def image_row(self) -> ImageRow:
        return ImageRow(
            name=self.name, source=self.source, **{f.name: getattr(self.image, f.name) for f in dataclasses.fields(ImageInfo)}, pairs=len(self.rows)
        )


@dataclass(frozen=True, kw_only=True)
class ImageRow(ImageInfo):
    """One clean HR image: a line of `pairs/images.jsonl`, what training reads."""

    name: str
    source: str
    pairs: int | None = None  # None: from a run before the index (its pairs not counted)
    note: str | None = None  # transient: what its migration could not recover

    @classmethod
    def from_json(cls, d: dict) -> ImageRow:
        if isinstance(d, dict) and "source_jpeg_quality" not in d and "source" in d:  # before the quality was recorded
            q, note = recorded_quality(d, "source_jpeg_quality")
            d = {**d, "source_jpeg_quality": q, "note": note}
        return cls._build(d)


def write_jsonl(rows: list[_Record]) -> bytes:
    """JSON lines, keys sorted (the manifest's and the image index's bytes)."""
    return "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in rows).encode()


def read_image_index(run: RunDir) -> tuple[list[ImageRow], list[str]] | None:
    """Every clean HR image of a run, with notes: the image index, or (a run from before it) the
    first pair of each image in the manifest; None when the run has neither."""
    if run.images_index.is_file():
        return [ImageRow.from_json(json.loads(line)) for line in run.images_index.read_text().splitlines() if line.strip()], []
    if not run.manifest.is_file():
        return None
    by_image: dict[str, dict] = {}
    for line in run.manifest.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_image.setdefault(row["name"].rsplit("_s", 1)[0], row)
    note = (
        f"{run.root} has no {run.images_index.name} (made before it): only the {len(by_image)} images with pairs are used; rerun degrade on it (cached, "
        f"quick) to train on every clean HR image"
    )
    return [ImageRow.from_json({**row, "name": name}) for name, row in by_image.items()], [note]
