from pathlib import Path

import pytest
from pydantic import ValidationError

from realsr.flows.settings import DegradeSettings

BASE = dict(source=Path("/data/photos"), out=Path("/data/run"))


def test_defaults_follow_the_paper():
    s = DegradeSettings(**BASE)
    assert (s.scale, s.cleanup_factor, s.noise_patch_size, s.noise_stride, s.noise_max_var, s.noise_min_mean) == (4, 2, 256, 256, 20.0, 0.0)
    assert s.kernels == "bicubic" and s.spec().stride == s.pair_hr_size == 256
    # the reference noise rule stays a named option; the adaptive one is the default (BENCHMARKS.md)
    assert (s.noise_rule, s.spec().noise.size, s.noise_match_brightness, s.on_empty_noise) == ("adaptive", 32, True, "warn")
    assert DegradeSettings(**BASE, noise_rule="reference").spec().noise.size == 256


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"scale": 3}, "Input should be 2 or 4"),
        ({"noise_max_var": -1}, "greater than 0"),
        ({"noise_min_mean": 300}, "less than 255"),
        ({"cleanup_factor": 0}, "greater than or equal to 1"),
        ({"pair_hr_size": 30}, "multiple of the scale"),
        ({"noise_rule": "reference", "pair_hr_size": 256, "noise_patch_size": 32}, "must fit in a noise patch"),
        ({"noise_rule": "fixed"}, "'adaptive' or 'reference'"),
        ({"on_empty_noise": "maybe"}, "'warn' or 'stop'"),
        ({"kernels": "gaussian"}, "'kernelgan-fkp', 'kernelgan-fkp-camera' or 'bank:PATH'"),
        ({"kernelgan_device": "tpu"}, "String should match pattern"),
        ({"kernelgan_iterations": 0}, "greater than or equal to 1"),
        ({"out": Path("/data/photos/run")}, "must not be inside the source"),
        ({"tint": "red"}, "Extra inputs"),
    ],
)
def test_nonsense_values_get_clear_messages(kw, message):
    with pytest.raises(ValidationError, match=message):
        DegradeSettings(**{**BASE, **kw})


def test_a_preset_means_the_same_from_the_prefect_ui_form():
    """The UI's "Custom run" form submits every field at its schema default: the preset must
    still decide every field that is not given a value of its own."""
    from realsr.flows.train_settings import PAPER, PRESETS, TrainSettings

    schema = TrainSettings.model_json_schema()
    form = {name: prop.get("default") for name, prop in schema["properties"].items()}
    form.update(run_dir="/data/runs/a", out="/data/runs/t", preset="finetune")
    s = TrainSettings.model_validate(form)
    for name, value in {**PAPER, **PRESETS["finetune"]}.items():
        assert getattr(s, name) == value, name
    assert TrainSettings.model_validate({**form, "iterations": 77}).iterations == 77  # a value of the user's own wins
    assert TrainSettings.model_validate({**form, "preset": "paper"}).iterations == PAPER["iterations"] == 60_000
