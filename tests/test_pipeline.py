"""realsr-pipeline's settings and stage bookkeeping (the flow itself runs in test_demo and test_server_mode)."""

import os

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from realsr.flows.pipeline import claim_pipeline_dir, pipeline_flow
from realsr.flows.pipeline_settings import PipelineSettings
from realsr.steps import pipeline as p
from realsr.storage.run_dir import RunDirError


def ui_form(flow, model: str) -> dict:
    """Every field at its schema default: what the Prefect UI's form submits when left alone."""
    schema = parameter_schema(flow).model_dump()
    return {k: v.get("default") for k, v in schema["definitions"][model]["properties"].items()}


def test_the_ui_form_keeps_the_pipeline_and_train_presets(photo_dir, tmp_path):
    form = ui_form(pipeline_flow, "PipelineSettings") | {"source": str(photo_dir), "out": str(tmp_path / "p"), "preset": "demo"}
    s = PipelineSettings(**form)
    t = s.train_settings()
    assert (t.preset, t.iterations, t.batch_size, t.init) == ("finetune", 60, 4, "realesrgan-x4plus")
    assert s.degrade_settings().kernelgan_seeds == 1 and s.released_models() == ["realesrgan-x4plus"]
    mine = PipelineSettings(**form | {"train": {"iterations": 7}, "degrade": {"kernelgan_seeds": 2}})
    assert mine.train_settings().iterations == 7 and mine.train_settings().batch_size == 4 and mine.degrade_settings().kernelgan_seeds == 2


def test_stage_settings_are_checked_before_anything_starts(photo_dir, tmp_path):
    base = {"source": photo_dir, "out": tmp_path / "p"}
    with pytest.raises(ValidationError, match=r"train\.iterations: Input should be greater than or equal to 1"):
        PipelineSettings(**base, train={"iterations": 0})
    with pytest.raises(ValidationError, match=r"degrade\.no_such: Extra inputs are not permitted"):
        PipelineSettings(**base, degrade={"no_such": 1})
    with pytest.raises(ValidationError, match="train: out are set by the pipeline"):
        PipelineSettings(**base, train={"out": "/elsewhere"})
    with pytest.raises(ValidationError, match="test_lr: .* is not a folder"):
        PipelineSettings(**base, test_lr=tmp_path / "missing")


def test_a_new_or_changed_photo_or_setting_makes_the_stages_stale(photo_dir, tmp_path):
    settings = {"kernels": "bicubic"}
    key = p.degrade_key(settings, photo_dir)
    assert p.degrade_key(settings, photo_dir) == key
    assert p.degrade_key({"kernels": "kernelgan"}, photo_dir) != key
    photo = sorted(photo_dir.iterdir())[0]
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 1))
    touched = p.degrade_key(settings, photo_dir)
    assert touched != key
    (photo_dir / "new.png").write_bytes(photo.read_bytes())
    assert p.degrade_key(settings, photo_dir) not in (key, touched)
    train = {"iterations": 5, "out": "/a", "run_dir": "/r", "resume": "auto"}
    assert p.train_key(train, key) == p.train_key({**train, "out": "/b"}, key)  # the key names the folder
    assert p.train_key(train, key) != p.train_key(train, touched) != p.train_key({**train, "iterations": 6}, touched)


def test_the_pipeline_folder_is_never_someone_elses(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds other files"):
        claim_pipeline_dir(theirs)
    pdir = claim_pipeline_dir(tmp_path / "new")
    p.record_stage(pdir, "degrade", "k1")
    assert p.is_current(pdir, "degrade", "k1", pdir.record) and not p.is_current(pdir, "degrade", "k2", pdir.record)
    assert claim_pipeline_dir(tmp_path / "new") == pdir and p.read_stages(pdir)["degrade"]["key"] == "k1"
    pdir.record.write_text("{torn")
    with pytest.raises(ValueError, match="unreadable pipeline record"):
        p.read_stages(pdir)


def test_how_the_work_runs_reruns_no_stage(photo_dir):
    """The KernelGAN engine and where training degrades its LR change no stage's key (an upgrade
    that adds such a setting retrains no pipeline); a setting of what is made does."""
    from realsr.steps import pipeline as p

    d = {"scale": 4, "kernels": "kernelgan"}
    assert p.degrade_key({**d, "kernelgan_engine": "fused"}, photo_dir) == p.degrade_key(d, photo_dir) != p.degrade_key({**d, "scale": 2}, photo_dir)
    t = {"iterations": 10, "run_dir": "a", "out": "b"}
    assert p.train_key({**t, "degrade_on": "device"}, "k") == p.train_key(t, "k") != p.train_key({**t, "iterations": 11}, "k")
