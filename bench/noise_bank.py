"""Noise bank against the truth: synthetic cameras of known noise on clean images.

Clean scenes come from ../shared/data, downscaled (INTER_AREA) until their own noise is well
under the cleanest camera's: small photos of about 0.2 MP, and large ones of several MP tiled
(mirrored) from the bigger photos; and noise-free renders of `models.synthetic.camera_photo`
as a control whose scenes have no residual of their own. Each camera adds signal-dependent Gaussian noise,
variance a*x + b on [0, 1] with 30 % of it shared by the three channels, and may JPEG the result
(quality 75, OpenCV's 4:2:0). The true noise of a photo is its camera's output minus the same
camera's output without noise, so JPEG's removal of noise counts as the camera's.

For the released collect_noise.py run unmodified (`official`, with `--official`), the reference rule
as this project implements it (256 px, luma variance < 20, mean > 0), the
same rule with 64 px patches (`reference-64`, so that it finds something on small photos) and
the adaptive rule (`models.noise.select_noise_tiles`), per camera and size:
- patches found per image (min and mean) and images with none;
- the bank's noise level per brightness bin (median luma std of its patches as injection adds
  them: the reference's patch minus its channel means, the adaptive rule's residual) against the
  true NLF (median true-noise luma std of 16 px blocks of that brightness, over the photos);
  `max err held`: the worst bin the bank holds patches of; `max err all`: the worst bin the
  photos contain (>= 1 % of their blocks), with bins the bank lacks drawn from the nearest it has,
  as brightness-matched injection would;
- texture share: patches whose energy below 1 cycle per 16 px exceeds the 99th percentile of
  the same measure on crops of the pure true noise;
- injection: the noise std that injection puts on flat LR crops of each contained brightness,
  drawn uniformly (the reference) or brightness-matched, mean relative error to the truth;
- extraction seconds per MP (one thread of OpenCV);
- where the level comes from: the truth's range over the contained bins, the bank's median
  patch level, and at the bank's patches the true camera noise and the scene's own residual
  (a bank holds about sqrt(camera^2 + scene^2) there).

    .venv/bin/python bench/noise_bank.py            # prints the tables; rows to bench/results/noise_bank.jsonl
    .venv/bin/python bench/noise_bank.py --official ~/src/Real-SR   # adds the released collect_noise.py's rows
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from realsr.flows.settings import degrade_spec  # noqa: E402
from realsr.models.degradation import noise_crop, select_noise_patches  # noqa: E402
from realsr.models.noise import BRIGHTNESS_BINS, assemble_noise, block_stats, brightness_matched, luma, noise_cells, select_noise_tiles  # noqa: E402
from realsr.storage.images import read_image  # noqa: E402

CAMERAS = {  # name: (a, b) of variance a*x + b on [0, 1]; sigma at mid-grey in levels noted
    "clean": (4.0e-5, 2.0e-5, False),  # ~2 levels
    "clean-jpeg": (4.0e-5, 2.0e-5, True),
    "noisy": (8.0e-4, 1.0e-4, False),  # ~5.6 levels at mid-grey
    "noisy-jpeg": (8.0e-4, 1.0e-4, True),
    "very-noisy": (2.4e-3, 3.0e-4, False),  # ~9.7 levels: luma variance ~42, above the reference's 20
}
SHARED = 0.3  # share of the noise variance common to the three channels
NLM_H = 5  # non-local means strength that cleans the scenes (8 was tried: clean small worse, large better)


def _resize(img: np.ndarray, f: float) -> np.ndarray:
    return cv2.resize(img, None, fx=1 / f, fy=1 / f, interpolation=cv2.INTER_AREA) if f != 1 else img


def _mirror_mosaic(img: np.ndarray, n: int) -> np.ndarray:
    row = np.concatenate([img if j % 2 == 0 else img[:, ::-1] for j in range(n)], 1)
    return np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(n)], 0)


def _clean(img: np.ndarray, f: float) -> np.ndarray:
    """A scene without noise of its own: non-local means (h=5), then an INTER_AREA downscale by f."""
    u8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    den = cv2.fastNlMeansDenoisingColored(u8, None, NLM_H, NLM_H, 5, 15).astype(np.float32) / 255.0
    return _resize(den, f)


def clean_scenes() -> dict[str, list[tuple[str, np.ndarray]]]:
    rd = lambda p: read_image(DATA / p).rgb  # noqa: E731
    sky = [(n.split("_")[0], _clean(rd(f"camera_photos/{n}_srgb8.png"), 1.1)) for n in ("tmshre_riaphotographs", "cvo9xd_keong_macan", "u76c0g_bliznaca")]
    small = sky + [
        ("building", _clean(rd("photos/building.jpg"), 1.5)),
        ("hdr_room", _clean(rd("camera_photos/hdr_room_16bit.png"), 1.4)),
        ("flower", _clean(rd("camera_photos/flower.png"), 4)),
    ]
    small += [(n, _clean(rd(f"hr/set14/{n}.png"), 1.1)) for n in ("pepper", "monarch", "barbara")]
    flower = _clean(rd("camera_photos/flower.png"), 2)
    large = [
        ("flower/2 mirrored 2x2", _mirror_mosaic(flower, 2)),
        (
            "sky photos mirrored 3x3",
            np.concatenate([_mirror_mosaic(_clean(rd(f"camera_photos/{n}_srgb8.png"), 1), 3) for n in ("tmshre_riaphotographs", "u76c0g_bliznaca")], 1),
        ),
    ]
    return {"small": small, "large": large}


def rendered_scenes() -> dict[str, list[tuple[str, np.ndarray]]]:
    """Noise-free renders (`models.synthetic.camera_photo` with no sensor noise: sky, walls,
    texture, shapes, lens blur): scenes with no residual of their own, to tell the rule's
    error from the photos' (whose cleaned scenes keep 0.5-0.8 levels of residual)."""
    from realsr.models.synthetic import camera_photo

    small = [(f"render {i}", camera_photo(100 + i, 384, 512, noise_level=0.0)) for i in range(6)]
    large = [(f"render {i} large", camera_photo(200 + i, 1800, 2400, noise_level=0.0)) for i in range(2)]
    return {"render small": small, "render large": large}


def camera(clean: np.ndarray, name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The camera's photo (float [0, 1], from uint8) and its true noise (0-255 scale)."""
    a, b, jpeg = CAMERAS[name]
    sd = np.sqrt(a * clean + b)
    n = sd * (np.sqrt(1 - SHARED) * rng.standard_normal(clean.shape) + np.sqrt(SHARED) * rng.standard_normal(clean.shape[:2])[..., None])
    out = lambda x: _jpeg(np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)) if jpeg else np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)  # noqa: E731
    noisy, plain = out(clean + n), out(clean)
    return noisy.astype(np.float32) / 255.0, noisy.astype(np.float32) - plain.astype(np.float32)


def _jpeg(u8: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def true_nlf(cleans: list[np.ndarray], noises: list[np.ndarray], block: int = 16, flat: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The truth per brightness bin where the scene is flat (its own detrended luma std < `flat`).

    Median true-noise luma std of those 16 px blocks, and each bin's share of them. Flat areas
    because that is the noise a bank can hold; with JPEG it differs from textured areas' noise.
    """
    sig, bri = [], []
    for c, n in zip(cleans, noises):
        st = block_stats(luma(c), np.zeros(c.shape[:2], bool), block)
        ny = luma(n / 255.0)
        h, w = (ny.shape[0] // block) * block, (ny.shape[1] // block) * block
        blocks = ny[:h, :w].reshape(h // block, block, w // block, block).swapaxes(1, 2).reshape(-1, block * block)
        keep = st.sigma < flat
        sig.append(blocks.std(1)[keep])
        bri.append(st.brightness[keep])
    sig, bri = np.concatenate(sig), np.concatenate(bri)
    which = np.clip(np.digitize(bri, BRIGHTNESS_BINS) - 1, 0, len(BRIGHTNESS_BINS) - 2)
    share = np.bincount(which, minlength=len(BRIGHTNESS_BINS) - 1) / max(len(which), 1)
    level = np.array([np.median(sig[which == b]) if (which == b).sum() >= 20 else np.nan for b in range(len(BRIGHTNESS_BINS) - 1)])
    return level, share


def low_share(patch: np.ndarray, cut: float = 1 / 16) -> float:
    """Share of a mean-removed luma patch's energy at 0 < |f| < cut cycles per px."""
    y = patch - patch.mean()
    f = np.abs(np.fft.fft2(y)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(y.shape[0]), np.fft.fftfreq(y.shape[1]), indexing="ij")
    r = np.hypot(fy, fx)
    return float(f[(r > 0) & (r < cut)].sum() / max(f.sum(), 1e-12))


def extract(rule: str, photo: np.ndarray) -> dict:
    """One photo's bank part: per patch the luma noise as injection adds it, brightness, RGB noise."""
    t = time.perf_counter()
    if rule.startswith("reference"):
        r = degrade_spec(noise_rule="reference").noise  # the settings' values
        p = int(rule.split("-")[1]) if "-" in rule else r.patch_size
        sel, _ = select_noise_patches(photo, p, p, r.max_var, r.min_mean)
        noise = [photo[y : y + p, x : x + p] * 255.0 for y, x in zip(sel["y"], sel["x"])]
        noise = [p - p.mean((0, 1)) for p in noise]
        brightness, at = sel["mean"], list(zip(sel["y"], sel["x"]))
    else:
        r = degrade_spec().noise
        tiles = select_noise_tiles(photo, r.tile, r.tolerance, r.max_per_image)
        noise, brightness, at = list(tiles.residual), tiles.brightness, list(zip(tiles.y, tiles.x))
    return _bank_part(noise, brightness, time.perf_counter() - t, at)


def _bank_part(noise: list[np.ndarray], brightness, seconds: float, at: list | None = None) -> dict:
    """What `measure` reads of one photo's bank part: its patches' noise (0-255), their luma,
    brightness and (where known) their top-left corners in the photo."""
    return {"noise": noise, "luma": [luma(p / 255.0) for p in noise], "brightness": np.asarray(brightness, np.float64), "seconds": seconds, "at": at}


def at_tiles(bank: list[dict], cleans: list[np.ndarray], noises: list[np.ndarray], surface: bool) -> tuple[float, float]:
    """Median over the bank's patches of the scene's own residual and of the true camera noise
    there, each as the bank holds a patch: luma std after the quadratic surface (`surface`, the
    adaptive rule) or after the mean (the reference); 0-255 levels.

    A patch holds about sqrt(camera^2 + scene^2): where the scene's flattest areas carry texture
    near the camera's noise level, a bank of them reads high though the rule chose well.
    """
    scene, camera_ = [], []
    for b, c, n in zip(bank, cleans, noises):
        images = ((luma(c), scene), (luma(n / 255.0), camera_))  # once per photo, not per patch
        for (y, x), q in zip(b["at"] or [], b["noise"]):
            p = q.shape[0]
            for img, out in images:
                crop = img[y : y + p, x : x + p]
                out.append(float(block_stats(crop, np.zeros(crop.shape, bool), p).sigma[0]) if surface else float(crop.std(dtype=np.float64)))
    return (float(np.median(scene)), float(np.median(camera_))) if scene else (float("nan"), float("nan"))


def official_bank(photos: list[np.ndarray], repo: Path) -> list[dict]:
    """The released collect_noise.py (`official_collect_noise.py`) on the photos as PNGs: per
    photo its patches read back, minus their channel means as the paper's injection uses them."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "photos", Path(tmp) / "df2k" / "Corrupted_noise"
        src.mkdir()
        out.parent.mkdir()
        for i, ph in enumerate(photos):
            cv2.imwrite(str(src / f"{i:03d}.png"), np.rint(ph[..., ::-1] * 255).astype(np.uint8))
        t = time.perf_counter()
        cmd = [sys.executable, str(ROOT / "bench" / "official_collect_noise.py"), "--repo", str(repo), "--images", str(src), "--out", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
        secs = (time.perf_counter() - t) / len(photos)
        bank = []
        for i in range(len(photos)):
            patches = [cv2.imread(str(f), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float64) for f in sorted(out.glob(f"{i:03d}_*.png"))]
            bank.append(_bank_part([q - q.mean((0, 1)) for q in patches], [float(luma(q / 255.0).mean()) for q in patches], secs))
    return bank


def inject_error(bank: list[dict], level: np.ndarray, bins: np.ndarray, matched: bool, rng: np.random.Generator, size: int = 64) -> float:
    """Mean relative error of the injected noise std on flat crops of each contained brightness."""
    noise = [p for b in bank for p in b["noise"]]
    bri = np.concatenate([b["brightness"] for b in bank])
    if not noise:
        return float("nan")
    errs = []
    for b in bins:
        centre = (BRIGHTNESS_BINS[b] + BRIGHTNESS_BINS[b + 1]) / 2
        stds = []
        for _ in range(16):
            if noise[0].shape[0] >= size:
                i = int(brightness_matched(bri, [centre], rng)[0]) if matched else int(rng.integers(len(noise)))
                off = rng.integers(0, noise[i].shape[0] - size + 1, 2)
                field = noise_crop(np.clip(noise[i] + 128, 0, 255), (size, size), tuple(off)) * 255  # mean-removed crop
            else:
                cells = noise_cells(size, noise[0].shape[0])
                picks = brightness_matched(bri, [centre] * len(cells), rng) if matched else rng.integers(len(noise), size=len(cells))
                field = assemble_noise([noise[i] for i in picks], size) * 255
            stds.append(luma(field / 255.0).std())
        errs.append(abs(np.mean(stds) / level[b] - 1))
    return float(np.mean(errs))


def measure(camera_name: str, size: str, scenes: list, rule: str, seed: int = 0, official: Path | None = None) -> dict:
    rng = np.random.default_rng(seed)
    photos, noises = zip(*[camera(c, camera_name, rng) for _, c in scenes])
    level, share = true_nlf([c for _, c in scenes], noises)
    contained = np.flatnonzero((share >= 0.005) & np.isfinite(level))  # bins whose flat areas the photos hold (not the clipped ends)
    contained = contained[(contained > 0) & (contained < len(share) - 1)]
    bank = official_bank(list(photos), official) if rule == "official" else [extract(rule, p) for p in photos]
    counts = [len(b["noise"]) for b in bank]
    lum = [s for b in bank for s in b["luma"]]
    bri = np.concatenate([b["brightness"] for b in bank])
    which = np.clip(np.digitize(bri, BRIGHTNESS_BINS) - 1, 0, len(BRIGHTNESS_BINS) - 2)
    held = {b: float(np.median([lum[i].std() for i in np.flatnonzero(which == b)])) for b in np.unique(which)}
    err_held = {int(b): v / level[b] - 1 for b, v in held.items() if b in contained}
    err_all = {}
    for b in contained:
        if held:
            nearest = min(held, key=lambda h: (abs(h - b), h))
            err_all[int(b)] = held[nearest] / level[b] - 1
    # texture: low-frequency share against pure true-noise crops of the same size
    p = lum[0].shape[0] if lum else 32
    pure = []
    for n in noises:
        ny = luma(n / 255.0)
        for y in range(0, ny.shape[0] - p + 1, max(p, ny.shape[0] // 4)):
            for x in range(0, ny.shape[1] - p + 1, max(p, ny.shape[1] // 4)):
                pure.append(low_share(ny[y : y + p, x : x + p]))
    limit = float(np.percentile(pure, 99)) if pure else np.inf
    textured = float(np.mean([low_share(q) > limit for q in lum])) if lum else float("nan")
    mp = sum(ph.shape[0] * ph.shape[1] for ph in photos) / 1e6
    scene_at, camera_at = at_tiles(bank, [c for _, c in scenes], noises, surface=not rule.startswith("reference"))
    return {
        "camera": camera_name,
        "size": size,
        "rule": rule,
        "images": len(photos),
        "mp_per_image": round(mp / len(photos), 2),
        "counts": counts,
        "patches_min": int(min(counts)),
        "patches_mean": float(np.mean(counts)),
        "images_without": int(sum(c == 0 for c in counts)),
        "bins_contained": len(contained),
        "bins_held": len(err_held),
        "max_err_held": max(map(abs, err_held.values())) if err_held else None,
        "max_err_all": max(map(abs, err_all.values())) if err_all else None,
        "err_by_bin": {int(b): round(v, 3) for b, v in err_all.items()},
        "textured": textured,
        "true_level_range": [float(np.nanmin(level[contained])), float(np.nanmax(level[contained]))] if len(contained) else None,
        "bank_level": float(np.median([q.std() for q in lum])) if lum else None,
        "camera_at_patches": camera_at,
        "scene_at_patches": scene_at,
        "inject_uniform": inject_error(bank, level, contained, False, np.random.default_rng(1)),
        "inject_matched": inject_error(bank, level, contained, True, np.random.default_rng(1)),
        "s_per_mp": sum(b["seconds"] for b in bank) / mp,
    }


def _fmt(v, pct=False):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{100 * v:.1f} %" if pct else (f"{v:.2f}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cameras", default=",".join(CAMERAS))
    ap.add_argument(
        "--rules",
        default="reference,reference-64,adaptive",
        help="reference-P: the reference rule with P px patches; official: the released collect_noise.py (needs --official)",
    )
    ap.add_argument("--official", type=Path, help="checkout of Tencent/Real-SR, for the `official` rule")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "noise_bank.jsonl")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    rules = args.rules.split(",")
    rules += ["official"] if args.official and "official" not in rules else []
    scenes = {**clean_scenes(), **rendered_scenes()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rows = []
    print(
        (
            "| camera | size | rule | patches/image min, mean | images without | brightness bins held / contained | max err held | max err all | textured | "
            "inject err uniform | inject err matched | s/MP | truth levels | bank level | camera at patches | scene at patches |"
        )
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cam in args.cameras.split(","):
        for size, sc in scenes.items():
            for rule in rules:
                r = measure(cam, size, sc, rule, official=args.official)
                r.update(commit=commit, machine=f"{platform.node()} {platform.processor() or platform.machine()}", date=time.strftime("%Y-%m-%d %H:%M"))
                rows.append(r)
                print(
                    f"| {cam} | {size} ({r['mp_per_image']} MP) | {rule} | {r['patches_min']}, {r['patches_mean']:.1f} | {r['images_without']}/{r['images']} | "
                    f"{r['bins_held']}/{r['bins_contained']} | {_fmt(r['max_err_held'], True)} | {_fmt(r['max_err_all'], True)} | "
                    f"{_fmt(r['textured'], True)} | "
                    f"{_fmt(r['inject_uniform'], True)} | {_fmt(r['inject_matched'], True)} | {r['s_per_mp']:.2f} | "
                    f"{'-' if not r['true_level_range'] else '%.2f-%.2f' % tuple(r['true_level_range'])} | {_fmt(r['bank_level'])} | "
                    f"{_fmt(r['camera_at_patches'])} | {_fmt(r['scene_at_patches'])} |",
                    flush=True,
                )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")


if __name__ == "__main__":
    main()
