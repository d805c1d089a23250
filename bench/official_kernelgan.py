"""Run the official KernelGAN (sefibk/KernelGAN) unmodified on one image, on the CPU.

The reference code is not part of this project: pass the path of a checkout of its repository
(`git clone https://github.com/sefibk/KernelGAN`). Nothing in it is edited; this launcher only
patches the run time before importing it:
- device placement (unless `--device cuda`): `.cuda()` on tensors and modules returns them as
  they are and `torch.cuda.set_device` does nothing, so the code runs on the CPU (it has 21
  hard-coded calls);
- `np.int`, removed in NumPy 1.24, is put back as `int` (used by its `kernel_shift`);
- an empty `tensorflow` module stands in for the one its ZSSR imports at load time (ZSSR is not
  run: no `--SR`), and an empty `matplotlib` where none is installed (only ZSSR saves images);
- the global NumPy and torch seeds are set (the reference sets none), and torch's thread count.
Then it runs exactly what the reference's `train.py` runs for one image (`Config().parse` on
`create_params`, then `train`) and copies the saved kernels out of its .mat files as .npy:

    python bench/official_kernelgan.py --repo ~/src/KernelGAN --image lr.png --out DIR [--x4]
"""

from __future__ import annotations

import argparse
import glob
import importlib.machinery
import importlib.util
import os
import sys
import time
import types
from pathlib import Path


def stand_in(name: str) -> None:
    """An empty module for one the reference imports at load time but the kernel estimation never uses."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules.setdefault(name, module)


def patch_runtime(seed: int, threads: int, device: str = "cpu") -> None:
    import numpy as np
    import torch

    np.int = int  # removed in NumPy 1.24; the reference's kernel_shift calls np.int(...)
    stand_in("tensorflow")  # only ZSSR (not run) needs it, at import time
    if importlib.util.find_spec("matplotlib") is None:  # only ZSSR's image saving uses it (absent on the GPU machine)
        stand_in("matplotlib")
        stand_in("matplotlib.pyplot")
        sys.modules["matplotlib"].pyplot = sys.modules["matplotlib.pyplot"]
    if device == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
        torch.cuda.set_device = lambda *a, **k: None
    torch.set_num_threads(threads)
    np.random.seed(seed)
    torch.manual_seed(seed)


def launcher_parser(description: str, repository: str, **iterations) -> argparse.ArgumentParser:
    """The arguments of a launcher of an official kernel estimator (this one, `official_fkp.py`)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--repo", type=Path, required=True, help=f"checkout of {repository}")
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="where kernel_x2.npy (and kernel_x4.npy) go")
    ap.add_argument("--x4", action="store_true", help="the reference's --X4 (analytic x4 kernel too)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, **iterations)
    return ap


def main() -> None:
    ap = launcher_parser(__doc__.split("\n")[0], "sefibk/KernelGAN", default=3000, help="the reference's --max_iters (its default: 3000)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: the reference's own .cuda() calls run as written")
    args = ap.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    patch_runtime(args.seed, args.threads, args.device)
    sys.path.insert(0, str(args.repo.resolve()))
    import numpy as np
    import scipy.io as sio
    from configs import Config  # the reference's modules, from its checkout
    from train import create_params, train

    results = args.out / "official_results"
    params = argparse.Namespace(input_dir=str(args.image.parent), output_dir=str(results), X4=args.x4, SR=False, real=False, noise_scale=1.0)
    conf = Config().parse(create_params(args.image.name, params) + ["--max_iters", str(args.iterations)])
    t = time.perf_counter()
    train(conf)
    seconds = time.perf_counter() - t
    for scale in (2, 4) if args.x4 else (2,):
        (mat,) = glob.glob(os.path.join(conf.output_dir_path, f"*_kernel_x{scale}.mat"))
        np.save(args.out / f"kernel_x{scale}.npy", sio.loadmat(mat)["Kernel"].astype(np.float64))
    (args.out / "seconds").write_text(f"{seconds:.2f}\n")


if __name__ == "__main__":
    main()
