"""One declaration per setting (issue 36): the pydantic settings are the only place a default,
bound or meaning lives; the specs the steps receive are built from them by field name and declare
no default of their own, so a new setting is its `Field` plus its spec field and use.

The settings models are found by walking `realsr.flows` (any model with a `.spec()`), the spec
classes by walking what `.spec()` returns: a new settings model or nested spec is covered as it
appears, with no list here to update.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path

import pytest
from pydantic import BaseModel

import realsr.flows

# spec fields that take their value from a setting of another name, or from no setting (why)
RENAMED = {
    ("DegradeSpec", "stride"): "pair_stride",  # pair_stride, else pair_hr_size
    ("DegradeSpec", "source_name"): "source",  # the source as given, where `source` is its local mirror
    ("Scoring", "crop"): "crop_border",  # crop_border, else the scale
    ("LossWeights", "pixel"): "pixel_weight",
    ("LossWeights", "perceptual"): "perceptual_weight",
    ("LossWeights", "gan"): "gan_weight",
    ("LossWeights", "artifacts"): "artifact_weight",
    ("DataConfig", "scale"): None,  # the run folder's own, read when training sets up
    ("TrainSpec", "settings"): None,  # the whole settings, as JSON (stored with the run)
}
CONVERTED = {("Recipe", "perceptual_layers"), ("Schedule", "milestones")}  # parsed from the setting's text / list
FLOORS = {"DegradeSpec", "NoiseRule", "TrainSpec", "DataConfig", "Networks", "Recipe", "Cadence", "LossWeights", "Schedule", "Scoring"}


def settings_models() -> list[type[BaseModel]]:
    """Every settings model in realsr.flows that builds a spec (modules that define `def spec(`)."""
    found = {}
    for info in pkgutil.iter_modules(realsr.flows.__path__):
        path = Path(realsr.flows.__path__[0]) / f"{info.name}.py"
        if path.is_file() and "def spec(" in path.read_text():
            module = importlib.import_module(f"realsr.flows.{info.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__ and hasattr(obj, "spec"):
                    found[obj.__name__] = obj
    return list(found.values())


def defaults_of(model: type[BaseModel], root: Path) -> BaseModel:
    """The model at its defaults, each required field (a folder) a fresh folder under `root`."""
    need = {}
    for name, f in model.model_fields.items():
        if f.is_required():
            (root / name).mkdir(parents=True, exist_ok=True)
            need[name] = root / name
    return model(**need)


def walk(spec, under: str = "") -> list[tuple[object, str]]:
    """Every dataclass instance in a spec, with the attribute it sits under ('' at the top)."""
    out = [(spec, under)]
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += walk(value, f.name)
    return out


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> list[tuple[BaseModel, object, str]]:
    root = tmp_path_factory.mktemp("one_declaration")
    out = []
    for model in settings_models():
        settings = defaults_of(model, root / model.__name__)
        out += [(settings, obj, under) for obj, under in walk(settings.spec())]
    return out


def test_the_walk_finds_every_spec(specs):
    found = {type(obj).__name__ for _, obj, _ in specs}
    assert FLOORS <= found, f"not found by the walk: {sorted(FLOORS - found)}"


def test_no_spec_declares_a_default_of_its_own(specs):
    """A default on a spec would be a second declaration, silently out of step with the settings'."""
    own = sorted(
        f"{type(obj).__module__}.{type(obj).__name__}.{f.name}"
        for _, obj, _ in specs
        for f in dataclasses.fields(obj)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    )
    assert not own, f"spec fields with a default of their own (declare it in the settings model instead): {', '.join(own)}"


def test_every_spec_field_comes_from_a_setting(specs):
    """Each field of each spec has the setting it is built from (by name, `noise_` + name under
    `noise`, or RENAMED), and holds that setting's value."""
    orphans, differ = [], []
    for settings, obj, under in specs:
        cls = type(obj).__name__
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                continue  # a nested spec: its own fields are checked
            if (cls, f.name) in RENAMED:
                source = RENAMED[(cls, f.name)]
                if source is not None and source not in type(settings).model_fields:
                    orphans.append(f"{cls}.{f.name} (from {source}?)")
                continue
            source = next((n for n in (f.name, f"{under}_{f.name}") if n in type(settings).model_fields), None)
            if source is None:
                orphans.append(f"{cls}.{f.name}")
            elif (cls, f.name) not in CONVERTED and value != getattr(settings, source):
                differ.append(f"{cls}.{f.name} = {value!r}, {type(settings).__name__}.{source} = {getattr(settings, source)!r}")
    assert not orphans, f"spec fields no setting declares: {', '.join(orphans)}"
    assert not differ, f"spec fields that do not hold their setting's value: {'; '.join(differ)}"


def test_a_changed_setting_reaches_its_spec_field():
    """The specs are built by keyword from the settings: a setting changed is the spec's field changed."""
    from realsr.flows.settings import degrade_spec
    from realsr.flows.train_settings import train_spec

    assert degrade_spec(noise_tolerance=0.5).noise.tolerance == 0.5 and degrade_spec().noise.tolerance != 0.5
    assert degrade_spec(pair_stride=64, pair_hr_size=128).stride == 64 and degrade_spec(pair_hr_size=128).stride == 128
    s = train_spec(artifact_weight=0.25, lr_d=3e-4, jpeg_range=7, d_feat=16, val_every=9)
    assert (s.recipe.losses.artifacts, s.recipe.schedule.lr_d, s.data.jpeg_range, s.nets.d.num_feat, s.cadence.val_every) == (0.25, 3e-4, 7, 16, 9)
    assert train_spec().data.scale is None and train_spec(scale=2).data.scale == 2  # None: the run folder's, read at set-up


def test_kernelgan_settings_reach_its_config_by_name():
    """`kernelgan_<field>` on the spec is KernelGANConfig's `<field>`: a new KernelGAN setting needs
    no mapping edit; the rest keep the reference's values, which KernelGANConfig owns."""
    from realsr.flows.settings import degrade_spec
    from realsr.models.kernelgan import KernelGANConfig
    from realsr.steps.degrade_kernels import _kernelgan_config

    cfg = _kernelgan_config(degrade_spec(kernelgan_iterations=77, kernelgan_seeds=2, seed=3))
    assert (cfg.iterations, cfg.seeds, cfg.seed) == (77, 2, 3) and cfg.lr == KernelGANConfig.lr and cfg.crop == KernelGANConfig.crop


@pytest.mark.parametrize("command,model,skip", [("degrade", "DegradeSettings", {"source", "out"}), ("train", "TrainSettings", {"run_dir", "preset", "resume"})])
def test_every_setting_is_a_flag_of_its_command(command, model, skip):
    """A setting added to the model is a CLI flag with no other edit (flows/cli_fields.py)."""
    import argparse

    from realsr.flows.settings import DegradeSettings
    from realsr.flows.train_settings import TrainSettings

    models = {"DegradeSettings": DegradeSettings, "TrainSettings": TrainSettings}
    module = importlib.import_module(f"realsr.flows.cli_{command}")
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = {o for a in sub._actions for o in a.option_strings}
    missing = [n for n in models[model].model_fields if n not in skip and f"--{n.replace('_', '-')}" not in flags]
    assert not missing, f"settings without a `realsr {command}` flag: {missing}"
