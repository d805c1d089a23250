"""prefect.yaml's three deployment sets, checked without Docker or Kubernetes (none runs here):
`prefect deploy --all` against a real server with the six pools created from the workers' own
base job templates, then each container deployment's job variables rendered into the job the
Docker or Kubernetes worker would start (image, environment, GPU request, no volume); and a lint
of every deployment's entrypoint and parameters against its flow's settings model."""

import asyncio
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from realsr.flows.stack import POOLS, process_deployments

REPO = Path(__file__).resolve().parents[1]
K8S_TEMPLATE = REPO / "docker" / "k8s-job-template.json"
REGISTRY = "registry.test:5000/realsr"
STORE = "s3://realsr-test/store"
# what the deployer exports (docker/README.md); the Docker set stores the store's credentials
DEPLOY_ENV = {
    "REALSR_IMAGE_REGISTRY": REGISTRY,
    "REALSR_STORE_URL": STORE,
    "AWS_ACCESS_KEY_ID": "test-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret",
    "AWS_ENDPOINT_URL": "http://s3.test:9000",
}
CPU_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "MALLOC_MMAP_THRESHOLD_": "67108864", "DO_NOT_TRACK": "1"}
STORE_ENV = {k: DEPLOY_ENV[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
# pool -> (type, image tag, GPU)
CONTAINER_POOLS = {
    "docker-cpu": ("docker", "cpu", False),
    "docker-gpu": ("docker", "cuda", True),
    "k8s-cpu": ("kubernetes", "cpu", False),
    "k8s-gpu": ("kubernetes", "cuda", True),
}
STAGES = {"pipeline": "realsr-pipeline", "nightly": "degrade-flow", "degrade": "degrade-flow", "evaluate": "evaluate-flow", "train": "train-flow"}


def deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def default_template(kind: str) -> dict:
    if kind == "docker":
        from prefect_docker.worker import DockerWorker

        return DockerWorker.get_default_base_job_template()
    from prefect_kubernetes.worker import KubernetesWorker

    return KubernetesWorker.get_default_base_job_template()


def pool_template(pool: str) -> dict:
    """What docker/README.md creates each pool with: the Docker worker's default template, or the shipped Kubernetes one."""
    return json.loads(K8S_TEMPLATE.read_text()) if CONTAINER_POOLS[pool][0] == "kubernetes" else default_template("docker")


def test_each_set_has_the_same_five_on_its_own_pools():
    by_set: dict[str, dict[str, str]] = {}
    for d in deployments():
        base, _, suffix = d["name"].partition("-")
        by_set.setdefault(suffix, {})[base] = d["work_pool"]["name"]
    cpu_first = {"pipeline", "nightly", "degrade"}
    assert by_set == {
        "": {s: "cpu-pool" if s in cpu_first else "gpu-pool" for s in STAGES},
        "docker": {s: "docker-cpu" if s in cpu_first else "docker-gpu" for s in STAGES},
        "k8s": {s: "k8s-cpu" if s in cpu_first else "k8s-gpu" for s in STAGES},
    }
    assert process_deployments() == list(by_set[""])  # what `realsr stack up` and compose deploy


def test_the_kubernetes_template_is_the_workers_default_plus_the_gpu_limit_and_the_store_secret():
    """docker/k8s-job-template.json follows the installed prefect-kubernetes: an upgrade that changes
    its default template fails here until the file is regenerated (docker/README.md says how)."""
    shipped, default = json.loads(K8S_TEMPLATE.read_text()), default_template("kubernetes")
    container = shipped["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container.pop("envFrom") == [{"secretRef": {"name": "realsr-s3", "optional": True}}]
    assert container["resources"]["limits"].pop("nvidia.com/gpu") == "{{ gpu_limit }}"
    assert shipped["variables"]["properties"].pop("gpu_limit")["default"] is None
    assert shipped == default


def _resolved(value):
    """As `prefect deploy` resolves a deployment: its {{ $VARIABLE }}s from the environment."""
    from prefect.utilities.templating import apply_values

    return apply_values(value, os.environ, remove_notset=False)


@pytest.fixture
def deploy_env(tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    for sub in ("photos", "runs", "test/lr", "test/hr"):
        (data / sub).mkdir(parents=True)
    for k, v in {"REALSR_REPO": str(REPO), "REALSR_DATA": str(data), **DEPLOY_ENV}.items():
        monkeypatch.setenv(k, v)


@pytest.mark.parametrize("name", [d["name"] for d in deployments()])
def test_every_deployments_parameters_validate_against_its_flows_settings(name, deploy_env):
    """The entrypoint is a flow of the expected name, its `settings` validate as given (nothing
    left to a run), and in a container set every folder stays at the store: no volume holds it."""
    from prefect.flows import load_flow_from_entrypoint

    d = _resolved(next(d for d in deployments() if d["name"] == name))
    flow = load_flow_from_entrypoint(str(REPO / d["entrypoint"]))
    assert flow.name == STAGES[name.split("-")[0]]
    model = typing.get_type_hints(flow.fn)["settings"]
    settings = model(**d["parameters"]["settings"])
    assert "{{" not in json.dumps(d["parameters"])
    if d["work_pool"]["name"] not in POOLS:
        dumped = settings.model_dump(mode="json")
        folders = {k: v for k, v in d["parameters"]["settings"].items() if isinstance(v, str) and "/" in v}
        assert folders and all(v.startswith(STORE + "/") for v in folders.values())
        assert {k: dumped[k] for k in folders} == folders, f"{name}: a folder setting did not stay a URL"


@pytest.fixture(scope="module")
def deployed(prefect_server, tmp_path_factory):
    """The six pools (process, Docker, Kubernetes) and `prefect deploy --all` from the repo root."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async def create_pools():
        async with get_client() as client:
            for pool in POOLS:
                await client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
            for pool, (kind, _, _) in CONTAINER_POOLS.items():
                await client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=pool_template(pool)), overwrite=True)

    asyncio.run(create_pools())
    data = tmp_path_factory.mktemp("data")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "REALSR_REPO": str(REPO), "REALSR_DATA": str(data), **DEPLOY_ENV}
    prefect = str(Path(sys.executable).with_name("prefect"))
    p = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return prefect_server


async def _rendered(name: str):
    """(deployment, pool, the job configuration the pool's worker would run) for one deployment."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun

    async with get_client() as client:
        dep = await client.read_deployment_by_name(f"{STAGES[name.split('-')[0]]}/{name}")
        pool = await client.read_work_pool(dep.work_pool_name)
        if pool.type == "docker":
            from prefect_docker.worker import DockerWorkerJobConfiguration as Config
        else:
            from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration as Config
        config = await Config.from_template_and_values(pool.base_job_template, dep.job_variables, client=client)
        config.prepare_for_flow_run(FlowRun(flow_id=dep.flow_id, deployment_id=dep.id, name="check"), dep)
        return dep, pool, config


@pytest.mark.parametrize("name", [d["name"] for d in deployments() if d["work_pool"]["name"] in CONTAINER_POOLS])
def test_container_deployments_render_into_the_job_their_worker_would_start(deployed, name):
    import docker.models.containers

    dep, pool, config = asyncio.run(_rendered(name))
    kind, tag, gpu = CONTAINER_POOLS[pool.name]
    assert pool.type == kind and dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/realsr"}}]
    declared = set(pool.base_job_template["variables"]["properties"])
    assert set(dep.job_variables) <= declared, f"{name}: job variables the pool does not declare are ignored by its worker"
    assert "{{" not in json.dumps([dep.job_variables, dep.parameters])  # every $VARIABLE was set at deploy time
    expected_env = CPU_ENV if pool.name.endswith("-cpu") else {"DO_NOT_TRACK": "1"}
    image = f"{REGISTRY}/realsr-pipeline:{tag}"
    if kind == "docker":
        assert config.image == image and config.volumes == []
        assert config.env.items() >= {**expected_env, **STORE_ENV}.items() and config.env["PREFECT__FLOW_RUN_ID"]
        # the arguments docker-py would send to the engine's container create
        args = docker.models.containers._create_container_args({"image": config.image, "version": "1.44", **(config.container_create_kwargs or {})})
        requests = args.get("host_config", {}).get("DeviceRequests")
        assert requests == ([{"Driver": "nvidia", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}] if gpu else None)
    else:
        pod = config.job_manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == image and "volumes" not in pod and "volumeMounts" not in container
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env.items() >= expected_env.items() and not STORE_ENV.keys() & env.keys() and env["PREFECT__FLOW_RUN_ID"]
        assert container["envFrom"] == [{"secretRef": {"name": "realsr-s3", "optional": True}}]  # the store's credentials
        assert container["resources"] == {"limits": {"nvidia.com/gpu": 1} if gpu else {}, "requests": {}}
