"""Metrics against known values, and evaluate-flow end to end with its cache."""

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from realsr.flows.cli import main
from realsr.models.metrics import LPIPS, psnr, ssim
from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.storage.model_files import save_generator

SHARED = Path(__file__).resolve().parents[2] / "shared"


def test_y_psnr_and_ssim_known_values():
    hr = np.full((32, 32, 3), 0.5, np.float32)
    sr = hr + 1 / 255  # one level on every channel: Y moves by (65.481 + 128.553 + 24.966) / 255 levels
    assert psnr(sr, hr, y=True) == pytest.approx(20 * np.log10(255 / (219.0 / 255)), abs=1e-6)
    assert psnr(sr, hr, y=False) == pytest.approx(20 * np.log10(255), abs=1e-6)
    rng = np.random.default_rng(0)
    img = rng.random((40, 40, 3)).astype(np.float32)
    assert ssim(img, img) == pytest.approx(1.0) and psnr(img, img) == float("inf")
    noisy = np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1).astype(np.float32)
    assert 0 < ssim(noisy, img) < 0.95
    border = img.copy()
    border[:4] = 0  # damage only the border: crop_border=4 does not see it
    assert psnr(border, img, crop_border=4) == float("inf") and psnr(border, img) < 30
    with pytest.raises(ValueError, match="differ in size"):
        psnr(img[:30], img)


@pytest.mark.skipif(not (SHARED / "data" / "lpips_check").exists(), reason="the LPIPS reference images (shared data) are not on this machine")
def test_lpips_alex_reproduces_the_reference_values(weights_ready):
    read = lambda n: cv2.imread(str(SHARED / "data" / "lpips_check" / f"{n}.png"))[..., ::-1].astype(np.float32) / 255  # noqa: E731
    metric = LPIPS(weights_ready["alexnet"], weights_ready["lpips-alex-heads"])
    ref = read("ex_ref")
    assert metric(read("ex_p0"), ref) == pytest.approx(0.722, abs=5e-4)
    assert metric(read("ex_p1"), ref) == pytest.approx(0.138, abs=5e-4)


@pytest.fixture
def test_set(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    (tmp_path / "hr").mkdir()
    (tmp_path / "lr").mkdir()
    for i in range(3):
        hr = cv2.GaussianBlur(rng.integers(0, 256, (48, 44, 3), dtype=np.uint8), (5, 5), 1.5)
        lr = cv2.resize(hr, (11, 12), interpolation=cv2.INTER_AREA)
        hr = np.pad(hr, ((0, 2), (0, 1), (0, 0)), mode="edge")  # 50x45: a little over LR x4, mod-cropped
        cv2.imwrite(str(tmp_path / "hr" / f"im{i}.png"), hr)
        cv2.imwrite(str(tmp_path / "lr" / f"im{i}.png"), lr)
    return tmp_path / "lr", tmp_path / "hr"


@pytest.mark.slow
def test_evaluate_flow_with_hr_cache_and_without_hr(test_set, tmp_path, prefect_server, capsys, weights_ready):
    lr, hr = test_set
    torch.manual_seed(0)
    save_generator(tmp_path / "tiny.pth", RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=32)))
    args = ["evaluate", "--lr", str(lr), "--hr", str(hr), "--model", str(tmp_path / "tiny.pth"), "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| bicubic | 3 |" in out and "| tiny | 3 |" in out and "6 computed, 0 from the cache" in out
    rows = list(csv.DictReader((tmp_path / "ev" / "results.csv").open()))
    assert len(rows) == 6 and {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "lpips", "seconds"} <= rows[0].keys()
    bic = [float(r["psnr_y"]) for r in rows if r["model"] == "bicubic"]
    assert all(20 < v < 60 for v in bic)
    sheet = cv2.imread(str(tmp_path / "ev" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] >= 4 * 11 * 4  # LR, bicubic, tiny, HR per row
    assert main(args) == 0  # nothing new: everything from the cache
    assert "0 computed, 6 from the cache" in capsys.readouterr().out
    cv2.imwrite(str(lr / "im9.png"), cv2.imread(str(lr / "im0.png"))[:, ::-1])  # a new image without HR
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "2 computed, 6 from the cache" in captured.out
    table = (tmp_path / "ev" / "results.md").read_text()
    assert "| model | images | scored (with HR) |" in table and "| tiny | 4 | 3 |" in table  # the means are over the 3 with HR
    no_hr = ["evaluate", "--lr", str(lr), "--model", str(tmp_path / "tiny.pth"), "--out", str(tmp_path / "sr_only")]
    assert main(no_hr) == 0
    assert len(list((tmp_path / "sr_only" / "sr" / "tiny").glob("*.png"))) == 4
    assert "lpips" not in (tmp_path / "sr_only" / "results.csv").read_text().splitlines()[0]
    assert (tmp_path / "sr_only" / "results.md").read_text().splitlines()[:2] == ["| model | images | s/image |", "|---|---|---|"]
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, tmp_path / "odd.pth")
    assert main(["evaluate", "--lr", str(lr), "--out", str(tmp_path / "x"), "--model", str(tmp_path / "odd.pth")]) == 2  # nothing asked for can run
    assert "odd.pth: architecture not recognised" in capsys.readouterr().err
    both = [*args[:-2], "--model", str(tmp_path / "odd.pth"), "--out", str(tmp_path / "both")]  # one bad, one good
    assert main(both) == 1
    captured = capsys.readouterr()
    assert "FAILED odd on (all): " in captured.err and "| tiny | 4 | 3 |" in captured.out
    assert "- odd: " in (tmp_path / "both" / "results.md").read_text()


def test_evaluate_never_writes_among_its_test_images(test_set, tmp_path, capsys):
    from realsr.flows.settings import EvaluateSettings
    from realsr.steps import evaluate as ev

    lr, hr = test_set
    torch.manual_seed(0)
    save_generator(tmp_path / "tiny.pth", RRDBNet(RRDBConfig(num_feat=8, num_block=1, num_grow_ch=32)))
    (tmp_path / "link").symlink_to(hr)
    before = {d: sorted(p.name for p in d.iterdir()) for d in (lr, hr, tmp_path)}
    for out, words in [
        (lr, "is the --lr folder"),
        (lr / "results", "is inside the --lr folder"),
        (tmp_path / "link", "is the --hr folder"),
        (tmp_path, "holds the --lr folder"),
    ]:
        assert main(["evaluate", "--lr", str(lr), "--hr", str(hr), "--model", str(tmp_path / "tiny.pth"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "choose another --out" in err[0], err
    assert {d: sorted(p.name for p in d.iterdir()) for d in (lr, hr, tmp_path)} == before
    images, _ = ev.test_images(lr, hr)  # the step refuses too (deployments skip the CLI's checks)
    with pytest.raises(ValueError, match="is the --lr folder"):
        ev.evaluate_model("bicubic", None, "bicubic", images, lr, EvaluateSettings(lr=lr, out=lr).spec())
    assert sorted(p.name for p in lr.iterdir()) == before[lr]


def test_evaluate_scores_niqe_without_hr_and_no_niqe_turns_it_off(tmp_path, capsys):
    """NIQE on every SR image as written (no HR needed); an image too small for it keeps its row."""
    from realsr.flows.cli import _parser
    from realsr.flows.cli_fields import given
    from realsr.flows.settings import EvaluateSettings
    from realsr.models.niqe import niqe
    from realsr.steps import evaluate as ev

    rng = np.random.default_rng(0)
    (tmp_path / "lr").mkdir()
    for i in range(2):  # x4: 200x104, two 96-px blocks after the 4-px crop
        cv2.imwrite(str(tmp_path / "lr" / f"big{i}.png"), cv2.GaussianBlur(rng.integers(0, 256, (26, 50, 3), dtype=np.uint8), (3, 3), 0.8))
    cv2.imwrite(str(tmp_path / "lr" / "small.png"), rng.integers(0, 256, (12, 11, 3), dtype=np.uint8))
    images, _ = ev.test_images(tmp_path / "lr", None)
    out = tmp_path / "ev"
    logs = []
    scoring = EvaluateSettings(lr=tmp_path / "lr", out=out).spec()  # the settings' defaults
    rows, failures = ev.evaluate_model("bicubic", None, "bicubic", images, out, scoring, logs.append)
    assert not failures and len(rows) == 3
    scored = {r["image"]: r for r in rows}
    assert "niqe" not in scored["small"] and any("small: no NIQE: NIQE needs at least two 96x96 blocks" in m for m in logs)
    sr = cv2.imread(scored["big0"]["sr"])[..., ::-1].astype(np.float32) / 255
    assert scored["big0"]["niqe"] == pytest.approx(niqe(sr, ev.niqe_model(), 4))  # from the written PNG, crop = scale
    assert not any(c in r for r in rows for c in ev.HR_COLUMNS)
    summary = ev.means(rows, ["bicubic"])
    assert summary[0]["niqe"] == pytest.approx((scored["big0"]["niqe"] + scored["big1"]["niqe"]) / 2)
    ev.write_results(out, rows, summary)
    assert (out / "results.md").read_text().splitlines()[:2] == ["| model | images | NIQE | s/image |", "|---|---|---|---|"]
    assert (out / "results.csv").read_text().splitlines()[0] == "image,model,niqe,seconds,sr"
    off = EvaluateSettings(lr=tmp_path / "lr", out=out, niqe=False).spec()
    rows, _ = ev.evaluate_model("bicubic", None, "bicubic", images, tmp_path / "off", off, logs.append)
    assert all("niqe" not in r and not r["cached"] for r in rows) and off.key("m", "i") != scoring.key("m", "i")
    args = _parser().parse_args(["evaluate", "--lr", str(tmp_path / "lr"), "--out", str(out), "--no-niqe"])
    assert EvaluateSettings(lr=args.lr, out=args.out, **given(args, EvaluateSettings, {"lr", "hr", "models", "out"})).spec().niqe is False
