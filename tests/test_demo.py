"""`realsr demo` end to end at a tiny budget: every stage runs and the table has its three rows."""

import json
from pathlib import Path

import realsr.flows.demo as demo
import realsr.models.synthetic as synthetic
from realsr.flows.cli import main
from realsr.flows.pipeline_settings import PIPELINE_PRESETS


def test_the_demo_runs_every_stage_and_prints_the_table(prefect_server, tmp_path, monkeypatch, capsys):
    photo = synthetic.camera_photo
    monkeypatch.setattr(synthetic, "camera_photo", lambda seed: photo(seed, 256, 320))  # small photos, same scenes
    monkeypatch.setattr(demo, "DEMO_PHOTOS", 4)
    preset = PIPELINE_PRESETS["demo"]
    small = {
        "degrade": {**preset["degrade"], "kernelgan_iterations": 10},
        "train": {**preset["train"], "iterations": 2, "val_crops": 2, "val_every": 2, "save_every": 2},
    }
    monkeypatch.setitem(PIPELINE_PRESETS, "demo", small)
    assert main(["demo", str(tmp_path / "demo"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "On held-out photos (" in out and "the camera's model:" in out
    pipe = tmp_path / "demo" / "pipeline"
    table = (pipe / "eval" / "results.md").read_text()
    assert all(row in table for row in ("bicubic", "realesrgan-x4plus", "trained"))
    summary = json.loads((pipe / "summary.json").read_text())
    assert summary["validation_crops"] == 2 and len(list((Path(summary["train_dir"]) / "val" / "lr").glob("*.png"))) == 2
    assert (pipe / "eval" / "contact_sheet.png").exists() and (pipe / "run" / "kernels_sheet.png").exists() and (pipe / "trained.pth").exists()

    # a photo that cannot be read: the pipeline finishes on the others, lists it and exits 1 (the exit-code rule)
    (tmp_path / "demo" / "sample_photos" / "garbage.png").write_bytes(b"not a png" * 40)
    assert main(["pipeline", "--source", str(tmp_path / "demo" / "sample_photos"), "--out", str(pipe), "--preset", "demo", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "FAILED degrade:" in err and "garbage.png" in err
    assert json.loads((pipe / "summary.json").read_text())["failures"] == [f"degrade: {tmp_path / 'demo' / 'sample_photos' / 'garbage.png'}"]
