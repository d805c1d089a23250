"""Checks run before a command starts its Prefect API server and cluster (tens of seconds):
every setting that can be wrong is found in about a second, as one line naming the thing and
what to do. The flows check the same again where they act (deployments skip the CLI).
"""

from __future__ import annotations

from pathlib import Path

from realsr.models.errors import InputError


def degrade(settings) -> None:
    from realsr.storage.banks import open_kernel_bank
    from realsr.storage.images import list_images, remote_images
    from realsr.storage.remote import is_url
    from realsr.storage.run_dir import check_remote_folder, check_run_dir

    images = remote_images(settings.source) if is_url(settings.source) else list_images(settings.source)[0]
    if not images:
        raise InputError(f"no images found in {settings.source} (looked for png, jpg, tif, webp, bmp, ...)")
    check_remote_folder(settings.out) if is_url(settings.out) else check_run_dir(Path(settings.out))
    if settings.kernels.startswith("bank:"):
        open_kernel_bank(Path(settings.kernels[5:]))
    kernel_prior(settings)


def kernel_prior(settings) -> None:
    """A damaged or replaced prior file of the kernelgan-fkp sources: refused before any work
    (by the command line here, and by degrade-flow's deployment runs in their first second)."""
    if settings.kernels.startswith("kernelgan-fkp"):
        from realsr.storage.kernel_prior_file import verify

        verify(settings.kernel_prior)


def train(settings) -> None:
    from realsr.steps.train_data import TrainingDataError, run_scale, training_images
    from realsr.steps.train_setup import MARKER, check_train_dir, vgg19_path
    from realsr.storage.banks import open_noise_bank
    from realsr.storage.model_files import load_rrdb
    from realsr.storage.remote import is_url
    from realsr.storage.run_dir import RunDir, check_remote_folder

    if is_url(settings.run_dir):  # its images and banks are checked when the mirror is there
        check_remote_folder(settings.run_dir, must_exist=True)
        if settings.init:
            load_rrdb(settings.init)
    else:
        run = RunDir(Path(settings.run_dir))
        training_images(
            run, settings.hr_size, settings.val_crops, settings.val_images, settings.seed
        )  # a degrade run with a manifest, banks, large enough images
        if settings.noise:  # read (and its digest checked) in the first training step: damage is found here instead
            try:
                open_noise_bank(run.noise)
            except (FileNotFoundError, ValueError) as e:
                raise TrainingDataError(f"noise bank: {e}") from None
        if settings.init:
            load_rrdb(settings.init, expect_scale=run_scale(run))
    if settings.d_init:  # there, readable, and every key and shape the U-Net's
        from realsr.models.discriminators import DiscriminatorConfig
        from realsr.steps.train_setup import build_d

        build_d(DiscriminatorConfig(arch=settings.discriminator, num_feat=settings.d_feat), settings.d_init)
    if settings.perceptual_weight:
        vgg19_path(settings.vgg19_weights)
    if is_url(settings.out):  # whether there is something to resume is checked on the mirror
        check_remote_folder(settings.out, MARKER, "training folder")
    else:
        check_train_dir(Path(settings.out), settings.resume)


def evaluate(settings) -> None:
    from realsr.steps import evaluate as ev
    from realsr.storage.weights import require

    ev.check_out(settings.out, settings.lr, settings.hr)
    ev.test_images(settings.lr, settings.hr)
    models, failed = ev.load_models(settings.models, settings.scale)
    if failed and len(models) == 1:  # bicubic alone is left: nothing the user asked for can run
        raise InputError("; ".join(f"model {f['model']}: {f['reason']}" for f in failed))
    if settings.hr is not None:
        if settings.lpips_alexnet is None:
            require("alexnet")
        require("lpips-alex-heads")
    if settings.niqe:
        require("niqe")
