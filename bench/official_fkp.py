"""Run the official KernelGAN-FKP (JingyunLiang/FKP) unmodified on one image, on the CPU.

The reference code is not part of this project: pass the path of a checkout of its repository
(`git clone https://github.com/JingyunLiang/FKP`, with its data/pretrained_models/FKP_x2.pt).
Nothing in it is edited; this launcher only patches the run time before importing it:
- device placement: `.cuda()` on tensors and modules returns them as they are, `torch.cuda.set_device`
  and `torch.cuda.manual_seed` do nothing, and `torch.load` maps to the CPU (its prior was saved
  from a GPU; the load stays weights_only);
- its DataLoader (16 workers, pinned memory) loads in the main process: `num_workers=0`,
  `pin_memory=False`; the batches are the same crops;
- the seeds its `__main__` sets (NumPy and torch, 0) and torch's thread count.
Then it runs exactly what the reference's `main.py` runs for one image (`Config_FKP().parse` on
`create_params`, then `train_FKP`: 1000 iterations, x4 4000 with `--X4`, the x2 prior both times).
The image is treated as a synthetic one (its 10-px edge shave, as the official KernelGAN rows
run): the ground-truth .mat it reads for its plots is a placeholder of ones, as its `--real`
uses. Saved: kernel_x2.npy (its raw 11x11 `curr_k`, not shifted), with `--x4` also kernel_x4.npy
(what it returns: analytic x4 kernel after its `kernel_shift`, 21x21), and `seconds`:

    python bench/official_fkp.py --repo ~/src/FKP --image lr.png --out DIR [--x4]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import time


def patch_runtime(seed: int, threads: int, iterations: int | None) -> None:
    import numpy as np
    import torch
    import torch.utils.data

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.set_device = lambda *a, **k: None
    torch.cuda.manual_seed = lambda *a, **k: None
    load = torch.load
    torch.load = lambda *a, **k: load(*a, **{"map_location": "cpu", **k})

    class MainProcessLoader(torch.utils.data.DataLoader):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "num_workers": 0, "pin_memory": False})

        def __iter__(self):  # `iterations`: a shorter run, for smoke tests only
            it = super().__iter__()
            return it if iterations is None else itertools.islice(it, iterations)

    torch.utils.data.DataLoader = MainProcessLoader
    torch.set_num_threads(threads)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main() -> None:
    from official_kernelgan import launcher_parser  # bench/ is the script's folder

    args = launcher_parser(
        __doc__.split("\n")[0], "JingyunLiang/FKP", help="stop after this many batches (smoke tests; default: its own 1000/4000)"
    ).parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    repo = args.repo.resolve()
    prior = repo / "data" / "pretrained_models" / "FKP_x2.pt"
    if not prior.is_file():
        sys.exit(f"{prior}: the official FKP prior is missing")
    patch_runtime(args.seed, args.threads, args.iterations)
    # its modules find each other through the working directory (sys.path.append('../'))
    os.chdir(repo / "KernelGANFKP")
    sys.path.insert(0, str(repo / "KernelGANFKP"))
    import numpy as np
    import scipy.io as sio
    import torch

    out = args.out.resolve()
    inputs = out / "official_input"
    inputs.mkdir(parents=True, exist_ok=True)
    image = inputs / args.image.name
    shutil.copyfile(args.image, image)
    gt = str(image).replace("lr_x", "gt_k_x").replace(".png", ".mat")  # where its Config_FKP looks
    sio.savemat(gt, {"Kernel": np.ones([21, 21] if args.x4 else [11, 11])})

    from config.configs_FKP import Config_FKP  # the reference's modules, from its checkout
    from main import create_params, train_FKP
    from model.model_FKP import KernelGAN_FKP

    kept = {}
    finish = KernelGAN_FKP.finish

    def finish_keeping_x2(self):  # its x2 kernel, which an --X4 run does not return
        kept["x2"] = self.curr_k.detach().cpu().double().numpy()
        return finish(self)

    KernelGAN_FKP.finish = finish_keeping_x2
    params = argparse.Namespace(input_dir=str(inputs), output_dir=str(out / "official_results"), path_KP=str(prior), X4=args.x4, SR=False, real=False)
    conf = Config_FKP().parse(create_params(image.name, params))
    t = time.perf_counter()
    kernel = train_FKP(conf)
    seconds = time.perf_counter() - t
    np.save(out / "kernel_x2.npy", kept["x2"])
    if args.x4:
        np.save(out / "kernel_x4.npy", np.asarray(kernel, np.float64))
    (out / "seconds").write_text(f"{seconds:.2f}\n")
    print(f"torch {torch.__version__}, {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
