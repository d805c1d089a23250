"""`realsr demo` end to end at a tiny budget: every stage runs and the table has its three rows."""

import realsr.flows.demo as demo
import realsr.models.synthetic as synthetic
from realsr.flows.cli import main


def test_the_demo_runs_every_stage_and_prints_the_table(prefect_server, tmp_path, monkeypatch, capsys):
    photo = synthetic.camera_photo
    monkeypatch.setattr(synthetic, "camera_photo", lambda seed: photo(seed, 256, 320))  # small photos, same scenes
    for name, value in (("DEMO_PHOTOS", 4), ("DEMO_KERNELGAN_ITERATIONS", 10), ("DEMO_ITERATIONS", 2), ("VAL_CROPS", 2)):
        monkeypatch.setattr(demo, name, value)
    assert main(["demo", str(tmp_path / "demo"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "evaluate-flow on the 2 validation crops of 1 held-out photos" in out
    table = (tmp_path / "demo" / "eval" / "results.md").read_text()
    assert all(row in table for row in ("bicubic", "realesrgan-x4plus", "fine_tuned"))
    assert len(list((tmp_path / "demo" / "train" / "val" / "lr").glob("*.png"))) == 2
    assert (tmp_path / "demo" / "eval" / "contact_sheet.png").exists() and (tmp_path / "demo" / "run" / "kernels_sheet.png").exists()
