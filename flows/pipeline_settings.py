"""realsr-pipeline's parameters: where the photos are, where the pipeline folder goes, and a preset.

A preset bundles degrade-flow's and train-flow's settings (`product`: KernelGAN kernels and the
fine-tune of Real-ESRGAN x4plus; `cpu`: the same at a CPU's budget; `demo`: at a
demonstration's; `test-tiny`: seconds, for tests; `auto`, the default: product or cpu, by the
hardware the run finds). `degrade` and `train` hold only the fields a user changes: they go over
the preset's, so the Prefect UI's form (which submits every field) keeps the preset's meaning.
Both stages' settings are built and validated here, before any stage starts.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from realsr.flows.settings import FLOW_SETTINGS, DegradeSettings, Location
from realsr.flows.train_settings import TrainSettings
from realsr.storage.remote import is_url

RELEASED_ROW = "realesrgan-x4plus"  # the released model every pipeline table shows beside bicubic
PIPELINE_PRESETS: dict[str, dict[str, dict]] = {
    "product": {"degrade": {"kernels": "kernelgan"}, "train": {"preset": "finetune"}},
    # `realsr demo`: 2.3 min on 2 cores (BENCHMARKS.md, fresh machine run 3). KernelGAN with one
    # seed (the product's three cost 3x the time); 60 fine-tune iterations (batch 4 of 64 px,
    # x4plus); the 8 validation crops of held-out photos are also the evaluation set
    "demo": {
        "degrade": {"kernels": "kernelgan", "kernelgan_iterations": 1000, "kernelgan_seeds": 1},
        "train": {
            "preset": "finetune",
            "iterations": 60,
            "batch_size": 4,
            "hr_size": 64,
            "val_crops": 8,
            "val_every": 60,
            "save_every": 30,
            "log_every": 10,
            "workers": 1,
        },
    },
    # a CPU's budget: the product's KernelGAN and the `finetune-cpu` training (about 15 minutes of
    # a 2-core CPU; BENCHMARKS.md, "The CPU preset")
    "cpu": {"degrade": {"kernels": "kernelgan"}, "train": {"preset": "finetune-cpu"}},
    # for tests: bicubic kernels, a tiny network from scratch
    "test-tiny": {"degrade": {"kernels": "bicubic", "pair_hr_size": 64}, "train": {"preset": "test-tiny"}},
}
AUTO = "auto"  # the preset that fits the hardware the pipeline runs on (`hardware_preset`)
_OWN = {"degrade": {"source", "out"}, "train": {"run_dir", "out", "resume"}}


@functools.cache
def hardware_preset() -> str:
    """`auto`'s preset: `product` where torch sees a CUDA GPU, else `cpu` (product's fine-tune
    takes hours on a CPU). Asked once per process, of the machine the pipeline flow runs on."""
    import torch

    return "product" if torch.cuda.is_available() else "cpu"


def _preset_help() -> str:
    """Each preset's settings, from the table (so the form and `--help` cannot drift from it)."""
    return "; ".join(f"{name}: degrade {json.dumps(p['degrade'])}, train {json.dumps(p['train'])}" for name, p in PIPELINE_PRESETS.items())


def _join(folder: Path | str, name: str) -> Path | str:
    return f"{folder}/{name}" if is_url(folder) else Path(folder) / name


class PipelineSettings(BaseModel):
    """degrade -> train -> evaluate on one folder of photos."""

    model_config = FLOW_SETTINGS

    source: Location = Field(description="Folder of the camera's photos (searched recursively): a path, or a URL such as s3://bucket/photos.")
    out: Location = Field(
        description=(
            "Pipeline folder: run/ (degrade), train/, trained.pth (the trained generator), eval/ (the table), pipeline.json; a path, or a URL "
            "(then each stage, on whichever machine runs it, reads and writes there)."
        )
    )
    preset: Literal["auto", "product", "cpu", "demo", "test-tiny"] = Field(
        AUTO,
        description=(
            f"The bundle of degrade and train settings this pipeline starts from; auto: product where torch sees a CUDA GPU at the run's start, else cpu "
            f"(said in the log). {_preset_help()}."
        ),
    )
    degrade: dict[str, Any] = Field({}, description='degrade-flow settings over the preset\'s, e.g. {"kernelgan_seeds": 1} (any field but source and out).')
    train: dict[str, Any] = Field({}, description='train-flow settings over the preset\'s, e.g. {"iterations": 2000} (any field but run_dir, out and resume).')
    models: list[str] | None = Field(
        None, description="Models scored beside bicubic and the trained one (names or checkpoints); default: the train init, else realesrgan-x4plus."
    )
    test_lr: Path | None = Field(None, description="Optional folder of the user's own LR test photos, scored too (eval-test/).")
    test_hr: Path | None = Field(None, description="Their HR ground truth, matched by file stem.")
    stages: Literal["inline", "deployments"] = Field(
        "inline",
        description=(
            "'inline': each stage a sub-flow in this process; 'deployments': each stage its own deployment run (degrade on the CPU pool, train and evaluate "
            "on the GPU pool)."
        ),
    )

    @field_validator("degrade", "train", mode="before")
    @classmethod
    def _empty(cls, v):
        """A form's empty JSON field is {}; JSON text is parsed, with its error in one line."""
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"not JSON ({e.msg} at column {e.colno}): {v}") from None
            if not isinstance(v, dict):
                raise ValueError(f'a JSON object is needed, e.g. {{"iterations": 2000}}, got {json.dumps(v)}')
        return {} if v is None else v

    @model_validator(mode="after")
    def _stages_valid(self) -> "PipelineSettings":
        for stage, own in _OWN.items():
            if clash := sorted(own & set(getattr(self, stage))):
                raise ValueError(f"{stage}: {', '.join(clash)} are set by the pipeline (from source and out)")
        for stage, build in (("degrade", self.degrade_settings), ("train", self.train_settings)):
            try:
                build()
            except ValidationError as e:
                raise ValueError(
                    "; ".join(f"{stage}.{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg'].removeprefix('Value error, ')}" for err in e.errors())
                ) from None
        if self.stages == "deployments" and is_url(self.out) and not is_url(self.source):
            raise ValueError(
                (
                    f"source: a pipeline folder at a URL runs its stages wherever their pools' workers are, which may not see {self.source} on this "
                    f"machine; put the photos at a URL too (e.g. beside the pipeline folder), or set stages to inline"
                )
            )
        if self.test_hr is not None and self.test_lr is None:
            raise ValueError("test_hr needs test_lr")
        for name in ("test_lr", "test_hr"):
            if (path := getattr(self, name)) is not None and not Path(path).is_dir():
                raise ValueError(f"{name}: {path} is not a folder")
        return self

    @property
    def bundle(self) -> str:
        """The preset the stages run with (`auto` resolved on this machine)."""
        return hardware_preset() if self.preset == AUTO else self.preset

    def degrade_settings(self) -> DegradeSettings:
        fields = {**PIPELINE_PRESETS[self.bundle]["degrade"], **self.degrade}
        return DegradeSettings(**fields, source=self.source, out=_join(self.out, "run"))

    def train_settings(self, out: Path | None = None) -> TrainSettings:
        """train-flow's settings; `out` is the folder the stage's key names (pipeline.train_key)."""
        fields = {**PIPELINE_PRESETS[self.bundle]["train"], **self.train}
        return TrainSettings.from_preset(**fields, run_dir=_join(self.out, "run"), out=out or _join(self.out, "train"), resume="auto")

    def released_models(self) -> list[str]:
        if self.models is not None:
            return list(self.models)
        init = self.train_settings().init
        return [init] if init and not Path(init).suffix else [RELEASED_ROW]
