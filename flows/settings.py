"""degrade-flow's parameters: every knob of the paper's recipe, validated with clear messages.

Defaults follow the released RealSR code (`collect_noise.py`, `create_kernel_dataset.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from realsr.models.errors import RealsrError
from realsr.storage.remote import is_url, local_path

if TYPE_CHECKING:
    from realsr.steps.degrade import DegradeSpec
    from realsr.steps.evaluate import Scoring

DEVICE = r"^(auto|cpu|cuda(:\d+)?)$"  # a torch device a setting may name


def _location(v):
    """A URL (s3://bucket/photos) stays a string; anything else is a local path."""
    if is_url(v):
        return v.rstrip("/")
    return local_path(v) if isinstance(v, (str, Path)) else v


# A folder on this machine or at an fsspec URL (storage/remote.py); the UI shows a text field.
Location = Annotated[Path | str, BeforeValidator(_location), WithJsonSchema({"type": "string"})]


def _none_required(schema: dict) -> None:
    """A deployment run's `settings` may be partial (see `resolve`): the form and the server's
    parameter check require no field; the model still does, once merged."""
    schema.pop("required", None)


# every flow's settings model: unknown fields refused, immutable, partial in a deployment run
FLOW_SETTINGS = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_none_required)


def build(spec: type, settings: BaseModel, prefix: str = "", /, **given):
    """A step's spec (a dataclass without defaults) by keyword: each field from `given`, else the
    setting of its name (`prefix` + name). The settings model is the one place a value, bound and
    meaning are declared; a spec field with no setting fails here, at the first `.spec()`."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(spec)]
    if missing := [n for n in names if n not in given and prefix + n not in type(settings).model_fields]:
        raise TypeError(f"{spec.__name__}: no setting for {', '.join(prefix + n for n in missing)}")
    return spec(**{n: given[n] if n in given else getattr(settings, prefix + n) for n in names})


class SettingsError(RealsrError, ValueError):
    """Settings refused before any work: one line naming each bad field (a run's state message)."""


def one_line(e: ValidationError) -> str:
    """A pydantic error as `field: reason; field: reason`."""

    def line(err) -> str:
        where, why = ".".join(map(str, err["loc"])), err["msg"].removeprefix("Value error, ")
        return f"{where}: {why}" if where else why

    return "; ".join(map(line, e.errors()))


def deployment_settings(name: str = "settings") -> dict:
    """The `name` parameter stored with the deployment this flow run was started from ({} for a
    run not started from a deployment, a sub-flow included)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    dep_id = getattr(getattr(ctx, "flow_run", None), "deployment_id", None)
    if dep_id is None:
        return {}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return dict((client.read_deployment(dep_id).parameters or {}).get(name) or {})


def resolve(model: type[BaseModel], given, say=None):
    """A flow's settings: a model as given (the CLI, a parent flow), or a deployment run's dict
    merged over the deployment's own (Prefect replaces a top-level parameter whole, so
    `--params '{"settings": {"scale": 2}}'` would lose the deployment's source), validated in the
    run's first second; a bad value raises SettingsError with the one-line reason."""
    if isinstance(given, model):
        return given
    if isinstance(given, BaseModel):
        given = given.model_dump()
    given = dict(given or {})
    stored = deployment_settings()
    required = {k for k, f in model.model_fields.items() if f.is_required()}
    filled = sorted(k for k in stored if k not in given or (given[k] is None and k in required))
    if filled and say:
        say(f"settings: {', '.join(filled)} from the deployment's parameters, {', '.join(sorted(set(given) - set(filled))) or 'nothing'} from this run's")
    try:
        return model(**{**{k: v for k, v in stored.items() if k in filled}, **{k: v for k, v in given.items() if k not in filled}})
    except ValidationError as e:
        raise SettingsError(f"invalid settings: {one_line(e)}") from None


class DegradeSettings(BaseModel):
    """What degrade-flow does with a folder of real photos."""

    model_config = FLOW_SETTINGS

    source: Location = Field(description="Folder of real source photos (searched recursively): a path, or a URL such as s3://bucket/photos.")
    out: Location = Field(description="Run folder: empty, or one an earlier degrade run made; a path, or a URL such as s3://bucket/runs/cam1.")
    scale: Literal[2, 4] = Field(4, description="SR scale of the HR/LR pairs.")
    kernels: str = Field(
        "bicubic",
        description=(
            "Kernel source: 'bicubic' (the paper's Track 1 recipe), 'kernelgan' (each source's own kernel), 'kernelgan-camera' (one kernel for the camera: "
            "the consensus of its photos' kernels), 'kernelgan-fkp' / 'kernelgan-fkp-camera' (the same with KernelGAN's G moving only on the learned kernel "
            "prior, --kernel-prior) or 'bank:PATH' (reuse a kernel bank)."
        ),
    )
    kernel_prior: str = Field(
        "builtin",
        min_length=1,
        description=(
            "The kernel prior of the kernelgan-fkp sources: 'builtin' (shipped with the package) or a .pt file from `realsr kernels train-prior` (verified "
            "by the .sha256 beside it)."
        ),
    )
    kernelgan_iterations: int = Field(
        1000, ge=1, le=100_000, description="KernelGAN training steps per image and seed (the paper: 3000; its kernel has settled by step 750, BENCHMARKS.md)."
    )
    kernelgan_seeds: int = Field(
        3,
        ge=1,
        le=16,
        description=(
            "KernelGAN runs per image, each with its own seed; the kernel is their geometric median (3 x 1000 steps: ahead of the official code at x2 and "
            "x4, BENCHMARKS.md)."
        ),
    )
    kernelgan_device: str = Field("auto", pattern=DEVICE, description="Torch device for KernelGAN: auto, cpu, cuda or cuda:N.")
    kernelgan_batch: int | None = Field(
        None, ge=1, le=1024, description="Images trained together in one KernelGAN task (default: split evenly over the workers, at most 16)."
    )
    kernelgan_engine: Literal["auto", "per-image", "fused"] = Field(
        "auto",
        description=(
            "KernelGAN's engine: 'per-image' (one call per image and operation, seeds one after another), 'fused' (images x seeds as the slots of one "
            "network per step, for GPUs) or 'auto' (fused on CUDA, per-image on the CPU). Kernels agree within the seed spread (BENCHMARKS.md)."
        ),
    )
    cleanup_factor: int = Field(2, ge=1, le=8, description="Bicubic clean-up downscale of the sources (1 = none).")
    noise_rule: Literal["adaptive", "reference"] = Field(
        "adaptive",
        description=(
            "Noise extraction: 'adaptive' (tiles as flat as the photo's own noise level, gradients removed, clipped areas skipped) or 'reference' (the "
            "paper's collect_noise.py: noise_patch_size px patches of luma variance < noise_max_var)."
        ),
    )
    noise_tile: int = Field(32, ge=8, le=1024, description="adaptive: side of a noise tile, px of the source (large flat areas give many).")
    noise_tolerance: float = Field(
        0.08, gt=0, le=2, description="adaptive: keep tiles whose noise std is at most (1 + this) x the photo's noise level at their brightness."
    )
    noise_max_per_image: int = Field(64, ge=1, le=100_000, description="adaptive: at most this many tiles per photo, spread over brightness.")
    noise_match_brightness: bool = Field(
        True, description="Draw each LR crop's noise from patches of similar brightness (signal-dependent noise); off: uniform draws, as the paper."
    )
    noise_min_patches: int = Field(16, ge=0, description="A noise bank smaller than this is reported as tiny (a loud warning).")
    on_empty_noise: Literal["warn", "stop"] = Field(
        "warn", description="An empty noise bank: 'warn' goes on with noise-free pairs, 'stop' fails the run before the pairs."
    )
    noise_patch_size: int = Field(256, ge=8, le=4096, description="reference: side of a noise patch, px of the source.")
    noise_stride: int = Field(256, ge=1, le=4096, description="reference: step between candidate noise patches, px.")
    noise_max_var: float = Field(20.0, gt=0, le=65025, description="reference: keep patches whose luma variance is below this (0-255 scale).")
    noise_min_mean: float = Field(0.0, ge=0, lt=255, description="reference: keep patches whose luma mean is above this (50 for smartphone photos).")
    pair_hr_size: int = Field(256, ge=8, le=4096, description="Side of an HR training patch; LR is pair_hr_size/scale.")
    pair_stride: int | None = Field(None, ge=1, description="Step between HR patches (default: pair_hr_size).")
    seed: int = Field(0, ge=0, description="Seed of every random draw (kernel, noise patch, crop).")
    max_megapixels: float = Field(200.0, gt=0, description="Refuse larger images (decompression-bomb guard).")
    colour: Literal["srgb", "as-stored"] = Field(
        "srgb",
        description="srgb: each photo converted to sRGB from its ICC profile, as viewers show it; as-stored: its values as the file holds them "
        "(Display P3 stays P3), for a model of one wide-gamut camera whose photos are upscaled with `upscale --profile keep`.",
    )
    images_per_task: int | None = Field(None, ge=1, le=256, description="Images per Prefect task (default: about 8 tasks per stage, at most 32 images each).")

    @field_validator("kernels")
    @classmethod
    def _kernel_source(cls, v: str) -> str:
        if v == "bicubic":
            return v
        if v.startswith("bank:") and len(v) > 5:
            return v
        if v in ("kernelgan", "kernelgan-camera", "kernelgan-fkp", "kernelgan-fkp-camera"):
            return v
        raise ValueError(f"kernel source must be 'bicubic', 'kernelgan', 'kernelgan-camera', 'kernelgan-fkp', 'kernelgan-fkp-camera' or 'bank:PATH', got {v!r}")

    @model_validator(mode="after")
    def _consistent(self) -> "DegradeSettings":
        if self.pair_hr_size % self.scale:
            raise ValueError(f"pair_hr_size {self.pair_hr_size} must be a multiple of the scale {self.scale}")
        if self.pair_stride is not None and self.pair_stride % self.scale:
            raise ValueError(f"pair_stride {self.pair_stride} must be a multiple of the scale {self.scale}")
        if self.kernelgan_engine == "fused" and self.kernels.startswith("kernelgan-fkp"):
            raise ValueError("kernelgan_engine 'fused' is plain KernelGAN's: KernelGAN-FKP runs per image ('auto' or 'per-image')")
        lr = self.pair_hr_size // self.scale
        if self.noise_rule == "reference" and lr > self.noise_patch_size:
            raise ValueError(f"the LR patch ({lr} px = pair_hr_size/scale) must fit in a noise patch ({self.noise_patch_size} px)")
        from realsr.storage.run_dir import check_apart

        check_apart(self.source, self.out)  # either way, links resolved
        return self

    def spec(self, source_name: str | None = None) -> "DegradeSpec":
        """The typed input of degrade-flow's steps; `source_name`: the source as the user named it,
        where `source` is its local mirror (steps/mirrors.py)."""
        from realsr.steps.degrade import DegradeSpec
        from realsr.steps.degrade_noise import NoiseRule

        return build(
            DegradeSpec,
            self,
            noise=build(NoiseRule, self, "noise_"),
            stride=self.pair_stride or self.pair_hr_size,
            source_name=str(source_name or self.source),
        )


def degrade_spec(**over) -> "DegradeSpec":
    """The spec of DegradeSettings' defaults under `over` (by setting name), for tests and benches
    that call degrade's steps directly: the numbers stay declared once, in the settings."""
    return DegradeSettings(**{"source": "source", "out": "run", **over}).spec()


class EvaluateSettings(BaseModel):
    """What evaluate-flow compares: models (and bicubic) on a folder of LR photos."""

    model_config = FLOW_SETTINGS

    lr: Location = Field(description="Folder of LR test images: a path, or a URL.")
    hr: Location | None = Field(None, description="Folder of their HR ground truth, matched by file stem (none: SR images and a sheet only).")
    models: list[str] = Field(
        default_factory=list, description="Checkpoint paths or URLs, or known names (realsr-df2k, realesrgan-x4plus); bicubic is always a row."
    )
    out: Location = Field(description="Output folder: results.csv, results.md, sr/<model>/, contact_sheet.png, cache/; a path, or a URL.")
    scale: Literal[2, 4] = Field(4, description="SR scale; every model must have it.")
    crop_border: int | None = Field(None, ge=0, le=64, description="Pixels dropped on each side before PSNR/SSIM (default: the scale).")
    tile: int = Field(0, ge=0, le=8192, description="Tile size in LR px for the models (0: whole images).")
    tile_pad: int = Field(48, ge=0, le=512, description="Context around each tile, px.")
    device: str = Field("auto", pattern=DEVICE, description="Torch device: auto, cpu, cuda or cuda:N.")
    lpips_alexnet: Path | None = Field(
        None, description="AlexNet file for LPIPS (default: the verified `alexnet` weights: REALSR_WEIGHTS_DIR, the cache, else fetched)."
    )
    niqe: bool = Field(
        True,
        description=(
            "NIQE of every SR image (no reference, lower is more natural; images of at least 2 blocks of 96 px): the score to compare models on photos "
            "without HR; --no-niqe skips it."
        ),
    )

    def spec(self) -> "Scoring":
        """The typed input of evaluate-flow's steps."""
        from realsr.steps.evaluate import Scoring

        return build(Scoring, self, crop=self.scale if self.crop_border is None else self.crop_border)

    @model_validator(mode="after")
    def _paths(self) -> "EvaluateSettings":
        """Local folders are checked here; a URL when the run mirrors it (on the machine that runs it)."""
        for name in ("lr", "hr"):
            if (folder := getattr(self, name)) is not None and not is_url(folder) and not folder.is_dir():
                raise ValueError(f"{name}: {folder} is not a folder")
        return self
