"""bench/gpu.py, the one device script of issue 38: its CPU dry run has every row, and it needs
no Prefect, Zarr or pydantic (a lent GPU machine has none of them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("prefect", "zarr", "pydantic", "dask", "distributed")
# installs an import hook that refuses the blocked packages (and says so on stderr), then runs the script
RUN_BLOCKED = f"""
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            print(f"BLOCKED IMPORT {{name}}", file=sys.stderr)
            raise ImportError(f"blocked: {{name}}")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def table_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| group")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


@pytest.mark.slow
def test_cpu_dry_run_has_every_row_without_prefect_zarr_or_pydantic(tmp_path):
    cmd = [sys.executable, "-c", RUN_BLOCKED, str(ROOT / "bench" / "gpu.py"), "--device", "cpu", "--tiny", "--out", str(tmp_path)]
    done = subprocess.run([*cmd, "--results", str(tmp_path / "gpu.jsonl")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BLOCKED IMPORT" not in done.stderr, [line for line in done.stderr.splitlines() if "BLOCKED" in line]
    rows = table_rows((tmp_path / "gpu.md").read_text())
    got = {(r[0], r[1], r[2]): r for r in rows}
    want = []
    for tiling in ("untiled", "tiled 20/4/4"):
        group = f"upscale 32x24 LR, {tiling}"
        want += [(group, "plain eager fp32 (NCHW)", "fp32"), (group, "ours (steps.upscale path)", "fp32")]
    ft = "finetune batch 1 of 80 px"
    want += [
        (ft, "ours (today), step alone", "batch 1, 80 px"),
        (ft, "ours (today), fed by its loader", "batch 1, 80 px"),
        (ft, "BasicSR RealESRGANModel", "batch 1, 80 px"),
    ]
    for scale in (2, 4):
        for seeds in ("1 seed", "3 seeds"):
            group = f"kernelgan x{scale}, {seeds}"
            want += [(group, f"ours ({e})", f"batch {b}") for e in ("today", "fused") for b in (1, 2)]
            want.append((group, "official sefibk/KernelGAN", "1 process per photo"))
    assert sorted(got) == sorted(want)
    for key, r in got.items():
        value, note = r[3], r[8]
        if key[1].startswith("ours"):  # our paths always run here, and measure
            assert float(value) > 0, r
        else:  # a reference runs where it is installed, else says why not
            assert (value != "-" and float(value) > 0) or note.startswith("not available here") or "derived" in note, r
    assert all("RSS" in got[(ft, w, "batch 1, 80 px")][7] for w in ("ours (today), step alone", "ours (today), fed by its loader"))
    (line,) = (tmp_path / "gpu.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["device"].startswith("cpu") and len(record["rows"]) == len(want)


def test_finetune_rows_use_the_finetune_preset():
    """The device script builds the trainer without pydantic, from its own copy of the preset's
    values: they must stay those of flows/train_settings.py."""
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_train import FINETUNE

    from realsr.flows.train_settings import train_spec
    from realsr.models.losses import parse_layers

    spec = train_spec("finetune", scale=4)
    r = spec.recipe
    assert FINETUNE["losses"] == vars(r.losses)
    assert (FINETUNE["schedule"]["lr_g"], FINETUNE["schedule"]["lr_d"], FINETUNE["schedule"]["milestones"]) == (
        r.schedule.lr_g,
        r.schedule.lr_d,
        r.schedule.milestones,
    )
    assert parse_layers(FINETUNE["perceptual_layers"]) == r.perceptual_layers
    assert FINETUNE["ema_decay"] == r.ema_decay and FINETUNE["discriminator"] == spec.nets.discriminator
    assert FINETUNE["jpeg_range"] == spec.data.jpeg_range
    from gpu import FULL

    assert (FULL.ft_batch, FULL.ft_hr) == (r.batch_size, spec.data.hr_size)  # the device rows' batch and crop are the preset's
