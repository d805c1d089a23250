"""train-flow's records of a run: validation on held-out pairs (with the best checkpoint), the
loss and validation logs (CSV, TensorBoard when installed) and the sample sheets."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np

from realsr.models.degradation import to_uint8
from realsr.models.metrics import psnr
from realsr.models.tiling import upscale
from realsr.storage.atomic import read_json, write_bytes, write_json
from realsr.storage.images import write_png
from realsr.storage.model_files import save_generator
from realsr.storage.train_checkpoints import MODELS

LOSS_COLUMNS = ["iter", "stage", "lr_g", "l_pix", "l_percep", "l_artifacts", "l_g_gan", "l_d", "d_real", "d_fake", "seconds"]
LOSS_VALUES = LOSS_COLUMNS[3:-1]  # the per-iteration values a row averages
VAL_COLUMNS = ["iter", "psnr_y", "lpips", "crops"]
Log = Callable[[str], None]


def _csv_rows(path: Path, upto: int) -> list[dict]:
    """The rows of a log kept up to an iteration (a resumed run drops what it redoes)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["iter"]) <= upto]


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    write_bytes(path, ("\n".join(lines) + "\n").encode(), durable=False)


def validate(net, pairs, scale: int, device, lpips_fn) -> tuple[dict, list[np.ndarray]]:
    """Mean PSNR-Y (crop border = scale) and LPIPS of `net` on the validation crops, and its SR images."""
    net.eval()
    srs, p, lp = [], [], []
    for _, lr, hr in pairs:
        sr = upscale(net, lr, scale, device=device)
        srs.append(sr)
        p.append(psnr(sr, hr, scale, y=True))
        lp.append(lpips_fn(sr, hr) if lpips_fn else float("nan"))
    return {"psnr_y": round(float(np.mean(p)), 4), "lpips": round(float(np.mean(lp)), 4), "crops": len(pairs)}, srs


def sample_sheet(path: Path, pairs, srs: list[np.ndarray], scale: int, count: int = 4) -> None:
    """Rows of LR (nearest-upscaled) | SR | HR for the first validation crops."""
    rows = []
    for (_, lr, hr), sr in list(zip(pairs, srs))[:count]:
        near = np.repeat(np.repeat(lr, scale, 0), scale, 1)[: hr.shape[0], : hr.shape[1]]
        rows.append(np.concatenate([near, sr[: hr.shape[0], : hr.shape[1]], hr], axis=1))
    if rows:
        write_png(path, to_uint8(np.concatenate(rows, axis=0)))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def write_validation_set(out: Path, crops) -> Path | None:
    """The validation crops as `val/lr`, `val/hr` PNGs (the LR are already 8-bit): a paired test
    set of the camera for `realsr evaluate`, made of photos training never saw."""
    if not crops:
        return None
    for name, lr, hr in crops:
        write_png(out / "val" / "lr" / f"{name}.png", to_uint8(lr))
        write_png(out / "val" / "hr" / f"{name}.png", to_uint8(hr))
    return out / "val"


class RunRecords:
    """The logs of one training folder, continued from iteration `start` on a resume; `g_meta`
    goes into every generator file (its init, for `realsr upscale --blend`)."""

    def __init__(self, out: Path, start: int, log: Log, g_meta: dict | None = None):
        self.out, self.log, self.g_meta = out, log, g_meta
        self.losses_csv, self.val_csv = out / "losses.csv", out / "validation.csv"
        self.loss_rows, self.val_rows = _csv_rows(self.losses_csv, start), _csv_rows(self.val_csv, start)
        self.best = read_json(out / "best.json") if (out / "best.json").exists() and start else None
        self.tb = _tensorboard(out)

    def losses(self, row: dict, it: int) -> None:
        self.loss_rows.append(row)
        _write_csv(self.losses_csv, LOSS_COLUMNS, self.loss_rows)
        if self.tb:
            for k, v in row.items():
                if k.startswith(("l_", "d_")):
                    self.tb.add_scalar(f"train/{k}", v, it)

    def validation(self, it: int, net, g, pairs, scale: int, device, lpips_fn) -> dict:
        """Validate the EMA generator `net`; a new best (LPIPS, else PSNR-Y) saves net_g_best.pth."""
        row, srs = validate(net, pairs, scale, device, lpips_fn)
        row = {"iter": it, **row}
        self.val_rows.append(row)
        _write_csv(self.val_csv, VAL_COLUMNS, self.val_rows)
        sample_sheet(self.out / "samples" / f"iter_{it:07d}.png", pairs, srs, scale)
        score = row["lpips"] if lpips_fn else -row["psnr_y"]
        if it > 0 and (self.best is None or score < self.best["score"]):
            self.best = {"iter": it, "score": score, **row}
            save_generator(self.out / MODELS / "net_g_best.pth", g, net, self.g_meta)
            write_json(self.out / "best.json", self.best)
        self.log(f"validation at {it}: PSNR-Y {row['psnr_y']:.2f} dB, LPIPS {row['lpips']:.4f} on {row['crops']} validation crops")
        if self.tb:
            self.tb.add_scalar("val/psnr_y", row["psnr_y"], it)
            self.tb.add_scalar("val/lpips", row["lpips"], it)
        return row

    def close(self) -> None:
        if self.tb:
            self.tb.close()
