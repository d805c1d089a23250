"""One device script (issue 38): everything the GPU path is measured by, in one call, as one table.

Rows, each group beside its reference run in the same call (where one can run here):
- KernelGAN photos per minute at x2 and x4, 1 and 3 seeds, batch 1/16/64: our `estimate_kernels`
  (`--engines today,fused`: the batched engine `realsr.models.kernelgan_fused` when it imports),
  against the official sefibk/KernelGAN, one process per photo (`bench/gpu_kernelgan.py`);
- fine-tune it/s, GPU busy % and peak memory at batch 8 of 128 px: today's `finetune` step alone
  and fed by today's CPU loader, against BasicSR's RealESRGANModel (`bench/gpu_train.py`);
- upscaling LR MP/s at fp16/bf16 (fp32 on a CPU), untiled and tiled, against the same network in
  plain eager fp32 (`bench/gpu_upscale.py`).

Needs torch, numpy, opencv and the `realsr` layers that need no more (no Prefect, Zarr or
pydantic, which a lent GPU machine lacks; tests/test_gpu_script.py blocks them). Weights:
x4plus and VGG19 where `storage.weights` finds them (REALSR_WEIGHTS_DIR), else random networks of
the same shape (the rows say so). Whatever is left when `--budget-s` is spent is marked skipped.
`--tiny` is the same script at toy sizes (2-block G for the training rows): CI runs it on the CPU.

    python bench/gpu.py                                   # on a GPU machine: about 8 minutes (bench/gpu.sh carries what it needs)
    python bench/gpu.py --device cpu --tiny --out /tmp/g  # the dry run: about a minute

Output: the table on stdout and in OUT/gpu.md, and one JSON line (context + rows) appended to `--results`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def ensure_realsr() -> str:
    """`realsr.<layer>` importable: the installed package, else this checkout's folders (a lent
    GPU machine has the working tree but no install)."""
    try:
        import realsr.models  # noqa: F401

        return "installed"
    except ImportError:
        pkg = types.ModuleType("realsr")
        pkg.__path__ = [str(ROOT)]  # realsr.models -> ROOT/models, as pyproject's package-dir maps it
        sys.modules["realsr"] = pkg
        return f"from the checkout {ROOT}"


@dataclass(frozen=True)
class Sizes:
    tiny: bool
    kg_batches: tuple[int, ...]
    kg_photo: tuple[int, int]  # W, H
    kg_budget_s: float  # per row, after its calibration run
    kg_steps: tuple[int, int]  # the calibration run's steps, the most a row times
    official_iters: int
    ft_batch: int
    ft_hr: int
    ft_warmup: int
    ft_steps: int
    ft_workers: int
    ft_blocks: int  # G's RRDB blocks in the training rows (23: x4plus)
    up_size: tuple[int, int]
    up_tile: tuple[int, int, int]  # tile, pad, overlap (steps.upscale's defaults: pad 48, overlap 16)
    up_repeat: int
    budget_s: float


WORKERS = min(12, max(1, (os.cpu_count() or 4) - 2))  # today's loader workers on the GPU machine (12 on its 16 cores, as measured there)
FULL = Sizes(False, (1, 16, 64), (512, 384), 8.0, (5, 1000), 200, 8, 128, 5, 40, WORKERS, 23, (1024, 768), (256, 48, 16), 3, 450)
TINY = Sizes(True, (1, 2), (160, 128), 0.0, (1, 1), 2, 1, 80, 1, 1, 1, 2, (32, 24), (20, 4, 4), 1, 600)


def weights(dev, sizes: Sizes) -> dict:
    """Factories of the networks the rows use, and what they are, in words."""
    import torch

    from realsr.models.losses import VGG19_LAYERS, vgg19_features
    from realsr.models.rrdbnet import RRDBConfig, RRDBNet
    from realsr.storage.model_files import load_rrdb
    from realsr.storage.weights import locate

    x4plus, vgg = locate("realesrgan-x4plus").path, locate("vgg19").path

    def random_rrdb(blocks: int):
        torch.manual_seed(0)
        return RRDBNet(RRDBConfig(num_block=blocks))

    def trunk(last: str):
        if vgg is not None:
            return vgg19_features(vgg, last)
        from torchvision.models import vgg19

        torch.manual_seed(0)
        t = vgg19(weights=None).features[: VGG19_LAYERS[last] + 1]
        for p in t.parameters():
            p.requires_grad_(False)
        return t.eval()

    up = (lambda: load_rrdb(x4plus).model) if x4plus else (lambda: random_rrdb(23))
    up_note = "x4plus weights" if x4plus else "random RRDBNet of x4plus's shape (no weights found: REALSR_WEIGHTS_DIR)"
    if sizes.ft_blocks == 23 and x4plus:
        g, g_note = (lambda: load_rrdb(x4plus).model), "G from x4plus"
    else:
        g, g_note = (lambda: random_rrdb(sizes.ft_blocks)), f"G random RRDBNet, {sizes.ft_blocks} blocks" + ("" if sizes.ft_blocks == 23 else " (tiny)")
    return {"g": g, "vgg19": trunk, "upscale_g": up, "upscale_note": up_note, "note": f"{g_note}; VGG19 {'weights' if vgg else 'random'}"}


def budget(seconds: float):
    """`spent()`: None while time is left, else the note a skipped row carries."""
    start = time.monotonic()
    return lambda: f"skipped: the run's time budget ({seconds:.0f} s) was spent" if time.monotonic() - start > seconds else None


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def table(rows: list[dict]) -> str:
    """The markdown table; `vs reference`: value / the reference row's of the same group."""
    refs = {r["group"]: r for r in rows if r.get("reference")}
    lines = ["| group | what | setting | value | unit | vs reference | GPU busy | peak memory | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = refs.get(r["group"])
        vs = "reference" if r.get("reference") else (f"{r['value'] / ref['value']:.2f}x" if ref and ref.get("value") and r.get("value") else "-")
        cells = [r["group"], r["what"], r["setting"], fmt(r.get("value")), r["unit"], vs, r.get("busy", ""), r.get("peak", ""), r.get("note", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def context(dev, sizes: Sizes, how: str, args) -> dict:
    import torch

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or "?"
    return {
        "device": f"{dev.type}: {name}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg": open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else "?",
        "commit": commit,
        "realsr": how,
        "engines": args.engines,
        "sizes": asdict(sizes),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when there is one), cuda or cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: the CPU dry run CI makes")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu", help="folder for gpu.md")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "gpu.jsonl")
    ap.add_argument("--engines", default="today,fused", help="KernelGAN engines: today, fused (realsr.models.kernelgan_fused) or a module path")
    ap.add_argument("--sections", default="upscale,finetune,kernelgan", help="which groups of rows, in this order")
    ap.add_argument("--kernelgan-repo", help="a checkout of sefibk/KernelGAN (else $KERNELGAN_REPO, bench/out/KernelGAN)")
    ap.add_argument("--budget-s", type=float, help="stop starting rows after this many seconds (default: 450 full, 600 tiny)")
    args = ap.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    how = ensure_realsr()
    import gpu_kernelgan
    import gpu_train
    import gpu_upscale
    import torch

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu.py: --device cuda, but torch sees no CUDA device")
    sizes = TINY if args.tiny else FULL
    spent = budget(args.budget_s or sizes.budget_s)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    nets = weights(dev, sizes)
    t0, rows = time.perf_counter(), []
    for section in args.sections.split(","):
        if section == "upscale":
            rows += gpu_upscale.rows(args, sizes, dev, nets, spent)
        elif section == "finetune":
            rows += gpu_train.rows(args, sizes, dev, nets, spent)
        elif section == "kernelgan":
            rows += gpu_kernelgan.rows(args, sizes, dev.type, sync, spent)
        else:
            sys.exit(f"gpu.py: unknown section {section!r} (upscale, finetune, kernelgan)")
    ctx = {**context(dev, sizes, how, args), "seconds": round(time.perf_counter() - t0, 1)}
    head = f"{ctx['device']}, torch {ctx['torch']}, {ctx['threads']} threads, load {' '.join(ctx['loadavg'])}, commit {ctx['commit']}"
    head += f", {ctx['seconds']} s{' (tiny)' if sizes.tiny else ''}"
    text = f"{head}\n\n{table(rows)}\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.md").write_text(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        f.write(json.dumps({**ctx, "rows": rows}, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
