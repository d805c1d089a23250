"""train-flow's parameters, and the presets: named bundles of them.

`paper` is the released RealSR/ESRGAN recipe; `finetune` adapts a released generator to one
camera, `finetune-cpu` does so in about 15 minutes of a 2-core CPU; `cpu-small` and `test-tiny`
are small networks for this CPU and for tests. Every tunable
field defaults to None, "the preset's value", and the preset fills it in validation: so a preset
means the same from the CLI, `prefect deployment run` and the Prefect UI's form (which submits
every field at its schema default). A value given explicitly wins over the preset. The resolved
settings are printed at the start and stored with the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, model_validator

from realsr.flows.settings import DEVICE, FLOW_SETTINGS, Location, build
from realsr.models.discriminators import DiscriminatorConfig
from realsr.models.losses import parse_layers
from realsr.models.rrdbnet import RRDBConfig

if TYPE_CHECKING:
    from realsr.steps.train import TrainSpec

PAPER: dict = {  # the released ESRGAN / RealSR recipe: every field a preset sets
    "init": None,
    "iterations": 60_000,
    "batch_size": 16,
    "hr_size": 128,
    # the networks' shapes are owned by their constructors' configs (models/: the standalone
    # default of RRDBNet, ESRGAN's and x4plus's shape, and the paper's PatchGAN)
    "g_feat": RRDBConfig.num_feat,
    "g_blocks": RRDBConfig.num_block,
    "g_grow": RRDBConfig.num_grow_ch,
    "discriminator": DiscriminatorConfig.arch,
    "d_feat": DiscriminatorConfig.num_feat,
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "milestones": [5000, 10000, 20000, 30000],
    "warmup": 5000,
    "pixel_weight": 1e-2,
    "perceptual_weight": 1.0,
    "gan_weight": 5e-3,
    "perceptual_layers": "conv5_4",
    "gan_type": "ragan",
    "artifact_weight": 0.0,
    "train_blocks": 0,
    "ema_decay": 0.999,
    "kernel_per": "image",
    "noise": True,
    "noise_match_brightness": True,
    "jpeg": "auto",
    "jpeg_range": 5,
    "val_crops": 16,
    "val_images": 0,
    "val_every": 5000,
    "save_every": 5000,
    "keep_checkpoints": 2,
    "log_every": 50,
    "workers": 2,
    "degrade_on": "auto",
    "seed": 0,
    "device": "auto",
    "precision": "auto",
}
REALESRGAN_LOSSES = {
    "pixel_weight": 1.0,
    "perceptual_weight": 1.0,
    "gan_weight": 0.1,
    "perceptual_layers": "conv1_2:0.1,conv2_2:0.1,conv3_4:1,conv4_4:1,conv5_4:1",
}
FINETUNE_CPU_ITERATIONS = 800
PRESETS: dict[str, dict] = {
    # ESRGAN / RealSR: RRDB 23 blocks, PatchGAN, batch 16 of 128 px, 60k steps, halving at 5k/10k/20k/30k
    "paper": {},
    # a released generator adapted to one camera with the recipe it was trained with (Real-ESRGAN's:
    # L1 1, VGG19 conv1_2..conv5_4 weighted 0.1, 0.1, 1, 1, 1, vanilla GAN 0.1 from a U-Net
    # discriminator with spectral norm), lower G learning rate, short schedule (BENCHMARKS.md, "The
    # recipe, row by row": ahead of x4plus on all three measures, where ESRGAN's losses lost fidelity)
    "finetune": {
        "init": "realesrgan-x4plus",
        "iterations": 5000,
        "batch_size": 8,
        "lr_g": 5e-5,
        "lr_d": 1e-4,
        "milestones": [2500, 4000],
        "val_every": 500,
        "save_every": 500,
        **REALESRGAN_LOSSES,
        "discriminator": "unet",
        "gan_type": "vanilla",
    },
    # the same on a CPU: all of G, Real-ESRGAN's losses with the PatchGAN, 800 iterations of 4 x 64 px
    # (about 15 minutes of a 2-core AVX512-BF16 CPU). Measured on two cameras and two seeds (BENCHMARKS.md,
    # "The CPU preset on both cameras and two seeds"): 800 iterations beat 400 on LPIPS on every cell;
    # G's last 4 RRDBs alone for 1000 iterations, the earlier choice, lost 0.4 dB PSNR-Y on the mild
    # camera; 3000 of them followed the harsh camera's *estimated* degradation past x4plus
    "finetune-cpu": {
        "init": "realesrgan-x4plus",
        "iterations": FINETUNE_CPU_ITERATIONS,
        "batch_size": 4,
        "hr_size": 64,
        "lr_g": 5e-5,
        "lr_d": 1e-4,
        "milestones": [],
        "val_every": 200,
        "save_every": 100,
        "workers": 1,
        **REALESRGAN_LOSSES,
    },
    # small networks that train in minutes on two CPU cores
    "cpu-small": {
        "g_feat": 32,
        "g_blocks": 6,
        "g_grow": 16,
        "d_feat": 32,
        "iterations": 2000,
        "batch_size": 4,
        "hr_size": 64,
        "lr_g": 2e-4,
        "lr_d": 2e-4,
        "milestones": [1000, 1500],
        "warmup": 300,
        "val_every": 250,
        "save_every": 250,
        "workers": 1,
    },
    # for tests: seconds on a CPU
    "test-tiny": {
        "g_feat": 8,
        "g_blocks": 1,
        "g_grow": 8,
        "d_feat": 8,
        "iterations": 6,
        "batch_size": 2,
        "hr_size": 32,
        "milestones": [4],
        "warmup": 2,
        "val_every": 3,
        "save_every": 3,
        "val_crops": 2,
        "workers": 0,
        "log_every": 1,
    },
}


MIN_HR_SIZE = 16  # px: the smallest training crop (degrade-flow calls a run with no larger clean HR image unusable)


def _shown(v) -> str:
    return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def preset_values(name: str) -> str:
    """Each preset's value of a field, as the form and `--help` show it (from the table: it cannot drift)."""
    return ", ".join(f"{p}: {_shown({**PAPER, **values}[name])}" for p, values in PRESETS.items())


class TrainSettings(BaseModel):
    """What train-flow trains, on what, for how long."""

    model_config = FLOW_SETTINGS

    run_dir: Location = Field(
        description="A degrade-flow run folder (clean_hr/, kernels.zarr, noise.zarr, pairs/): a path, or a URL such as s3://bucket/runs/cam1."
    )
    out: Location = Field(description="Training folder: models/, training_states/, losses.csv, validation.csv, samples/; a path or a URL.")
    preset: Literal["paper", "finetune", "finetune-cpu", "cpu-small", "test-tiny"] = Field("paper", description="The bundle of settings this run started from.")
    init: str | None = Field(
        None,
        description=(
            "Generator to start from: a checkpoint path or a released generator by name (realsr weights list; fetched and verified on first use), none: from "
            "scratch with the L1 warm-up."
        ),
    )
    resume: Literal["no", "auto", "require"] = Field(
        "no", description="'auto' continues from the newest complete state in out if there is one; 'require' fails without one."
    )
    iterations: int | None = Field(None, ge=1, le=10_000_000, description="Total training iterations (a resumed run continues to this).")
    batch_size: int | None = Field(None, ge=1, le=1024, description="HR crops per iteration.")
    hr_size: int | None = Field(None, ge=MIN_HR_SIZE, le=1024, description="Side of an HR training crop, px (a multiple of the scale).")
    g_feat: int | None = Field(None, ge=4, le=256, description="RRDB features (from scratch; an init file sets its own).")
    g_blocks: int | None = Field(None, ge=1, le=64, description="RRDB blocks (from scratch).")
    g_grow: int | None = Field(None, ge=4, le=128, description="RRDB growth channels (from scratch).")
    discriminator: Literal["patchgan", "vgg128", "unet"] | None = Field(
        None,
        description=(
            "The paper's PatchGAN (70x70 windows), ESRGAN's VGG-128 (128 px crops only), or Real-ESRGAN's U-Net with spectral norm (a logit per pixel; crops "
            "a multiple of 8 px; d_init can start it from the released one)."
        ),
    )
    d_feat: int | None = Field(None, ge=4, le=256, description="Discriminator features of its first layer.")
    d_init: str | None = Field(
        None,
        description=(
            "Discriminator to start from (discriminator unet): a file in BasicSR's layout ({'params': state_dict}, or a bare state dict), or a released one "
            "by name (realesrgan-x4plus-netd: RealESRGAN_x4plus_netD.pth put in REALSR_WEIGHTS_DIR; no sha256 is published, so it is never downloaded); "
            "none: from scratch."
        ),
    )
    lr_g: float | None = Field(None, gt=0, le=1e-2, description="Adam learning rate of G.")
    lr_d: float | None = Field(None, gt=0, le=1e-2, description="Adam learning rate of D.")
    milestones: list[int] | None = Field(None, description="Iterations at which both learning rates halve.")
    warmup: int | None = Field(None, ge=0, description="L1-only iterations first, when training from scratch (ignored with init).")
    pixel_weight: float | None = Field(None, ge=0, description="L1 weight.")
    perceptual_weight: float | None = Field(None, ge=0, description="VGG19 conv5_4 (before ReLU) L1 weight.")
    gan_weight: float | None = Field(None, ge=0, description="GAN weight.")
    perceptual_layers: str | None = Field(
        None,
        description=(
            "VGG19 layers (before ReLU) of the perceptual loss and their weights: conv5_4 (ESRGAN, RealSR) or "
            "conv1_2:0.1,conv2_2:0.1,conv3_4:1,conv4_4:1,conv5_4:1 (Real-ESRGAN)."
        ),
    )
    gan_type: Literal["ragan", "vanilla"] | None = Field(
        None, description="'ragan': relativistic average (ESRGAN, RealSR); 'vanilla': real 1, fake 0 (Real-ESRGAN, with its U-Net discriminator)."
    )
    artifact_weight: float | None = Field(
        None, ge=0, description="LDL's artifact loss (Liang et al. 2022): L1 on the pixels where G's residual is erratic and worse than its EMA's; 0: off."
    )
    train_blocks: int | None = Field(
        None,
        ge=0,
        le=64,
        description=(
            "Train only G's last N RRDB blocks, conv_body and the upsampler (a fine-tune that also skips the backward pass through the frozen head); 0: all "
            "of G."
        ),
    )
    ema_decay: float | None = Field(None, ge=0, lt=1, description="EMA of G (saved as params_ema).")
    kernel_per: Literal["image", "sample"] | None = Field(
        None, description="'image': each source keeps its one kernel, as the paper; 'sample': a valid bank kernel drawn per crop."
    )
    noise: bool | None = Field(None, description="Inject a noise-bank crop into every LR.")
    noise_match_brightness: bool | None = Field(None, description="Draw noise from patches of the LR crop's brightness (off: uniform, as the paper).")
    jpeg: Literal["auto", "off"] | None = Field(None, description="'auto': re-compress each LR at its source JPEG's quality (PNG sources: none).")
    jpeg_range: int | None = Field(None, ge=0, le=50, description="auto: the quality varies by up to this much around the source's.")
    val_crops: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Validation crops (hr_size px, degraded once with their photo's own kernel, noise and JPEG quality, the same all run); 0: no validation.",
    )
    val_images: int | None = Field(None, ge=0, description="Photos held out of training for validation; 0: as many as val_crops needs, at most a quarter.")
    val_every: int | None = Field(None, ge=1, description="Validate (PSNR-Y, LPIPS, sample crops) every N iterations, and at the end.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N iterations, and at the end.")
    keep_checkpoints: int | None = Field(None, ge=1, le=1000, description="Numbered checkpoints kept besides best and latest.")
    log_every: int | None = Field(None, ge=1, description="Loss rows to losses.csv (means over the last N iterations).")
    workers: int | None = Field(None, ge=0, le=64, description="DataLoader worker processes (0: in the training process).")
    degrade_on: Literal["auto", "loader", "device"] | None = Field(
        None,
        description=(
            "Where training LR are degraded: 'loader': per sample in the DataLoader workers (numpy, OpenCV); 'device': in batches on the training device "
            "(grouped convolution, the noise bank there, torchvision's JPEG codec, nvJPEG on CUDA), the workers only crop and draw; 'auto': device on "
            "CUDA, loader on a CPU. Both draw the same kernel, noise and quality per sample."
        ),
    )
    seed: int | None = Field(None, ge=0, description="Seeds the networks' initialisation and every data draw.")
    device: str | None = Field(None, pattern=DEVICE, description="Torch device: auto, cpu, cuda or cuda:N.")
    precision: Literal["auto", "fp32", "bf16"] | None = Field(
        None,
        description=(
            "'auto': bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), fp32 elsewhere (the log says which and why); 'bf16' anywhere; "
            "'fp32'."
        ),
    )
    vgg19_weights: Path | None = Field(
        None, description="VGG19 file for the perceptual loss (default: the verified `vgg19` weights: REALSR_WEIGHTS_DIR, the cache, else fetched)."
    )
    lpips_alexnet: Path | None = Field(None, description="AlexNet file for validation LPIPS (default: the verified `alexnet` weights).")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """The preset's values for every field not given (so a Prefect run's parameters work alike)."""
        if isinstance(data, dict):
            preset = data.get("preset") or "paper"
            if preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r} (one of {', '.join(PRESETS)})")
            return {**PAPER, **PRESETS[preset], **{k: v for k, v in data.items() if v is not None}, "preset": preset}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "TrainSettings":
        if sorted(self.milestones) != list(self.milestones) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing positive iterations, got {self.milestones}")
        try:
            parse_layers(self.perceptual_layers)
        except ValueError as e:
            raise ValueError(f"perceptual_layers: {e}") from None
        if self.discriminator == "vgg128" and self.hr_size != 128:
            raise ValueError(f"the vgg128 discriminator takes 128 px crops: set hr_size 128 (got {self.hr_size})")
        if self.discriminator == "unet" and self.hr_size % 8:
            raise ValueError(f"the unet discriminator takes crops a multiple of 8 px: set hr_size accordingly (got {self.hr_size})")
        if self.d_init and self.discriminator != "unet":
            raise ValueError(f"d_init starts a U-Net discriminator (Real-ESRGAN's netD): set discriminator unet (got {self.discriminator})")
        return self

    @classmethod
    def from_preset(cls, preset: str = "paper", **given) -> "TrainSettings":
        """The preset's values under the explicitly given ones (None means 'not given')."""
        return cls(preset=preset, **given)

    def sources(self) -> dict[str, str]:
        """Where each preset field's value came from: the preset, or this run's own."""
        preset = {**PAPER, **PRESETS[self.preset]}
        return {k: ("preset" if getattr(self, k) == preset[k] else "set") for k in PAPER}

    def spec(self, scale: int | None = None) -> "TrainSpec":
        """The typed input of train-flow's steps, built by field name (`build`); `scale` None: the
        run folder's own, read when training sets up."""
        from realsr.models.training import LossWeights, Schedule
        from realsr.steps.train import Cadence, Networks, Recipe, TrainSpec
        from realsr.steps.train_data import DataConfig

        losses = LossWeights(
            pixel=self.pixel_weight, perceptual=self.perceptual_weight, gan=self.gan_weight, gan_type=self.gan_type, artifacts=self.artifact_weight
        )
        recipe = build(
            Recipe,
            self,
            losses=losses,
            schedule=build(Schedule, self, milestones=tuple(self.milestones)),
            perceptual_layers=parse_layers(self.perceptual_layers),
        )
        return build(
            TrainSpec,
            self,
            data=build(DataConfig, self, scale=scale),
            nets=build(Networks, self),
            recipe=recipe,
            cadence=build(Cadence, self),
            settings=self.model_dump(mode="json"),
        )


def train_spec(preset: str = "paper", scale: int | None = None, **over) -> "TrainSpec":
    """The spec of a preset under `over` (by setting name), for tests and benches that build a
    trainer or a dataset by hand: the numbers stay declared once, in the presets."""
    return TrainSettings.from_preset(preset, **{"run_dir": "run", "out": "train", **over}).spec(scale)


# the form and `--help` show what "none" means under each preset
for _name, _field in TrainSettings.model_fields.items():
    if _name in PAPER:
        _field.description = f"{_field.description} Unset (None): the preset's value ({preset_values(_name)})."
TrainSettings.model_rebuild(force=True)
