"""The operator's view (issue 32): a run that made nothing says so in its state, log, artifact
and exit code; a deployment run's partial `settings` merge over the deployment's; bad stage
settings fail the run at once with a one-line state message; the forms show the presets.

Deployment runs are made on the session's real Prefect server (the server merges and checks
the parameters, as for `prefect deployment run`) and executed in this process, as a worker
would execute them; the full stack's own run is tests/test_server_mode.py."""

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.callables import parameter_schema

from realsr.flows.cli import main
from realsr.flows.degrade import degrade_flow
from realsr.flows.pipeline import pipeline_flow
from realsr.flows.pipeline_settings import PipelineSettings, hardware_preset
from realsr.flows.train import train_flow
from realsr.flows.train_settings import FINETUNE_CPU_ITERATIONS
from tests.conftest import small_photo, write_rgb

pytestmark = pytest.mark.slow
SMALL = {"kernels": "bicubic", "noise_rule": "reference", "noise_patch_size": 32, "noise_stride": 32, "pair_hr_size": 64, "scale": 4}


def photos(folder: Path, side: int, n: int = 2) -> Path:
    for i in range(n):
        write_rgb(folder / f"photo_{i}.png", small_photo(i, side, side))
    return folder


def deployment_run(flow, name: str, stored: dict, given: dict):
    """A run of a deployment of `flow` storing `stored` settings, started with `given` parameters
    (what `prefect deployment run NAME --params` sends); the server's check refuses what the schema does."""
    with get_client(sync_client=True) as client:
        dep = client.create_deployment(
            flow_id=client.create_flow(flow),
            name=name,
            parameters={"settings": stored},
            enforce_parameter_schema=True,
            parameter_openapi_schema=parameter_schema(flow).model_dump(),
            entrypoint="flows/x.py:f",
        )
        return client.create_flow_run_from_deployment(dep, parameters=given)


def latest_artifact(api: str, key: str) -> str:
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    return httpx.post(f"{api}/artifacts/filter", json=body).json()[0]["data"]


def test_a_partial_deployment_run_merges_and_a_run_without_pairs_warns(tmp_path, prefect_server):
    src = photos(tmp_path / "photos", 96)  # clean HR 48 px: no 64 px pair, still crops for training
    stored = {"source": str(src), "out": str(tmp_path / "run"), **SMALL}
    run = deployment_run(degrade_flow, "op-degrade", stored, {"settings": {"scale": 2}})  # `source` left out: merged
    state = run_flow(degrade_flow.with_options(task_runner=ThreadPoolTaskRunner(1)), flow_run=run, parameters=run.parameters, return_type="state")
    assert state.is_completed() and "0 HR/LR pairs" in state.message and "hr_size 48 or less" in state.message
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["settings"]["scale"] == 2 and summary["settings"]["source"] == str(src) and summary["pairs"]["pairs"] == 0
    assert "**WARNING: 0 HR/LR pairs" in latest_artifact(prefect_server, "degrade-summary")


def test_a_run_that_made_nothing_usable_fails_and_the_pipeline_does_not_train(tmp_path, prefect_server, capsys):
    code = main(
        [
            "degrade",
            "--source",
            str(photos(tmp_path / "tiny", 24)),
            "--out",
            str(tmp_path / "run"),
            "--workers",
            "1",
            *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in SMALL.items()), []),
        ]
    )
    assert code == 2 and "degrade: nothing usable: every clean HR image is under 16 px" in capsys.readouterr().err
    # clean HR 24 px: degrade warns (no pair) but test-tiny trains on 32 px crops: stopped before train
    settings = PipelineSettings(source=photos(tmp_path / "small", 48), out=tmp_path / "pipeline", preset="test-tiny")
    state = pipeline_flow(settings, return_state=True)
    assert state.is_failed() and state.message.startswith(
        "train: nothing to train on: every clean HR image is smaller than the training crop of 32 px (largest 24 px"
    )
    assert not (tmp_path / "pipeline" / "train").exists()


def test_bad_stage_settings_fail_the_run_at_once_with_one_line(tmp_path, prefect_server):
    stored = {"source": str(photos(tmp_path / "photos", 48, 1)), "out": str(tmp_path / "p"), "preset": "test-tiny"}
    run = deployment_run(pipeline_flow, "op-pipeline", stored, {"settings": {**stored, "degrade": {"kernelgan_seeds": "three"}}})
    state = run_flow(pipeline_flow, flow_run=run, parameters=run.parameters, return_type="state")
    assert (
        state.is_failed()
        and state.message == "invalid settings: degrade.kernelgan_seeds: Input should be a valid integer, unable to parse string as an integer"
    )
    with pytest.raises(ValueError, match=r"degrade\n  Value error, not JSON \(Expecting ':' delimiter at column 20\)"):
        PipelineSettings(**stored, degrade='{"kernelgan_seeds" 1}')  # the CLI and the form's JSON text alike
    with pytest.raises(httpx.HTTPStatusError, match="1 is not of type 'string'"):  # refused at submission, as the form is
        deployment_run(pipeline_flow, "op-pipeline-2", stored, {"settings": {"models": [1]}})


def test_the_forms_show_the_presets_and_auto_fits_the_hardware(tmp_path):
    train = parameter_schema(train_flow).model_dump()["definitions"]["TrainSettings"]["properties"]
    assert f"(paper: 60000, finetune: 5000, finetune-cpu: {FINETUNE_CPU_ITERATIONS}, cpu-small: 2000, test-tiny: 6)" in train["iterations"]["description"]
    assert "(paper: none, finetune: realesrgan-x4plus, finetune-cpu: realesrgan-x4plus, cpu-small: none, test-tiny: none)" in train["init"]["description"]
    preset = parameter_schema(pipeline_flow).model_dump()["definitions"]["PipelineSettings"]["properties"]["preset"]
    assert preset["default"] == "auto" and 'cpu: degrade {"kernels": "kernelgan"}, train {"preset": "finetune-cpu"}' in preset["description"]
    import torch

    s = PipelineSettings(source=photos(tmp_path / "photos", 48, 1), out=tmp_path / "p")
    assert hardware_preset() == ("product" if torch.cuda.is_available() else "cpu") == s.bundle
    assert s.train_settings().preset == ("finetune" if torch.cuda.is_available() else "finetune-cpu") and s.train_settings().iterations == (
        5000 if torch.cuda.is_available() else FINETUNE_CPU_ITERATIONS
    )


def test_stack_keeps_its_port_and_down_names_the_folder(tmp_path, capsys):
    import socket

    from realsr.flows.stack import Stack

    s = Stack(tmp_path / "stack")
    s.home.mkdir()
    first = s.choose_port()
    s.port_file.write_text(f"{first}\n")  # what `up` stores
    assert s.choose_port() == first  # the UI's address stays the same across `up`s
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first))
        said = []
        assert s.choose_port(say=said.append) != first and said == [f"port {first} (the last one used) is taken: a new one"]
    assert main(["stack", "down", "--home", str(s.home)]) == 0 and f"no stack in {s.home} (no stack.json): nothing to stop" in capsys.readouterr().out
    assert main(["stack", "down", "--home", str(tmp_path / "typo")]) == 2 and f"{tmp_path / 'typo'}: no such folder" in capsys.readouterr().err
    # status follows the exit-code rule: all running 0, some gone 1, none (or no stack) 2
    gone = subprocess.Popen(["true"])
    gone.wait()
    procs = [{"name": "server", "pid": os.getpid()}, {"name": "cpu-worker", "pid": gone.pid}]
    s.file.write_text(json.dumps({"processes": procs, "ui": "http://127.0.0.1:1"}))
    assert main(["stack", "status", "--home", str(s.home)]) == 1 and "cpu-worker: pid" in capsys.readouterr().out
    s.file.write_text(json.dumps({"processes": procs[:1], "ui": "http://127.0.0.1:1"}))
    assert main(["stack", "status", "--home", str(s.home)]) == 0
    s.file.unlink()
    assert main(["stack", "status", "--home", str(s.home)]) == 2


def test_a_contact_sheet_label_is_whole_and_its_tiles_readable():
    import numpy as np

    from realsr.flows.artifacts import means_markdown
    from realsr.steps.sheets import MIN_TILE, grid, label, text_width, wrap

    text = "photo_0 realesrgan-x4plus"
    tiles = [label(np.zeros((32, 32, 3), np.uint8), text), label(np.zeros((32, 32, 3), np.uint8), "photo_0 LR")]
    assert tiles[0].shape[1] >= MIN_TILE and " ".join(wrap(text, tiles[0].shape[1] - 4)) == text
    assert all(text_width(line) <= tiles[0].shape[1] - 4 for line in wrap(text, tiles[0].shape[1] - 4))
    assert grid(tiles, cols=2).shape[1] >= 2 * MIN_TILE  # labels of two and one lines on one grid
    means = [{"model": "bicubic", "images": 8, "scored": 8, "seconds": 0.01, **dict.fromkeys(("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "lpips"), 0.5)}]
    assert means_markdown(means).splitlines()[0] == "| model | images | PSNR-Y | SSIM-Y | PSNR-RGB | SSIM-RGB | LPIPS | s/img |"
