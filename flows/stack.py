"""`realsr stack up|down|status --home DIR`: a Prefect server, pools, limits, deployments and
workers on one machine, brought up in order (each waited for) and taken down by pid.

    up:   server on a free loopback port (PREFECT_UI_API_URL set, so the UI calls that port)
          -> cpu-pool, gpu-pool (process) -> tag limit `gpu` = the host's GPUs (1 without one)
          -> prefect.yaml's process set deployed (REALSR_REPO, REALSR_DATA set) -> CPU and GPU workers online
    down: workers first (their flow runs with them), then the server; SIGTERM, SIGKILL after 20 s

DIR holds stack.json (pids, URL), port (the last port: the UI's address stays the same across
`up`s unless another program took it), env (`source DIR/env` points the CLI at this server), logs/,
prefect/ (PREFECT_HOME: the database) and data/ (REALSR_DATA: the nightly schedule's folders).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from realsr.flows.exit_codes import outcome
from realsr.flows.runtime import OFFLINE_ENV
from realsr.models.errors import RealsrError

REPO = Path(__file__).resolve().parents[1]
POOLS = ("cpu-pool", "gpu-pool")
STOP_GRACE_S = 20


class StackError(RealsrError, ValueError):
    """The stack could not be brought up: one line naming the step and where its log is."""


MARK = "REALSR_STACK"  # in the environment of every process a stack starts: `down` finds them all by it


def process_deployments() -> list[str]:
    """prefect.yaml's deployments on this stack's pools: its Docker and Kubernetes sets need pools
    (and workers) of their own, so `prefect deploy --all` would stop at their first."""
    import yaml

    return [d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"] if d["work_pool"]["name"] in POOLS]


def _prefect() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def free_port(port: int = 0) -> int:
    """`port` when it is free on 127.0.0.1 (any free one for 0); raises OSError when taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Running (a zombie, exited and not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stack_env(home: Path, port: int) -> dict[str, str]:
    api = f"http://127.0.0.1:{port}/api"
    return {
        **OFFLINE_ENV,
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,  # else the UI on any port but 4200 calls :4200
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "REALSR_REPO": str(REPO),
        "REALSR_DATA": str(home / "data"),
    }


class Stack:
    def __init__(self, home: Path):
        self.home = Path(home).resolve()
        self.file = self.home / "stack.json"
        self.port_file = self.home / "port"

    def read(self) -> dict:
        return json.loads(self.file.read_text()) if self.file.exists() else {}

    def _save(self, state: dict) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.file)

    def _descendants(self) -> list[int]:
        """The processes this stack started, wherever they are now: each carries the stack's
        marker in its environment (`_spawn`), and so does whatever they start (Linux: /proc)."""
        mark = f"{MARK}={self.home}".encode()
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if int(proc.name) != os.getpid() and mark in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except (OSError, ValueError):
                continue
        return found

    def _spawn(self, state: dict, name: str, args: list[str], env: dict) -> None:
        """Start a long-lived process in its own session; its pid is saved before anything waits on it.
        It and what it starts carry the stack's marker (not written to `env`: a shell never has it)."""
        with open(self.home / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [_prefect(), *args],
                env={**env, MARK: str(self.home)},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        state["processes"].append({"name": name, "pid": proc.pid})
        self._save(state)

    def choose_port(self, port: int | None = None, say=print) -> int:
        """The port asked for, else the last one this stack used while it is free, else a free one."""
        if port:
            return port
        last = int(self.port_file.read_text()) if self.port_file.exists() and self.port_file.read_text().strip().isdigit() else None
        if last:
            try:
                return free_port(last)
            except OSError:
                say(f"port {last} (the last one used) is taken: a new one")
        return free_port()

    def up(self, port: int | None = None, cpu_workers: int = 1, gpu_workers: int = 1, gpus: int | None = None, say=print) -> dict:
        """Each step said as it completes, with the seconds since the start (the whole takes ~1-2 min)."""
        running = [p for p in self.read().get("processes", []) if _alive(p["pid"])]
        if running:
            raise StackError(f"{self.home} already runs a stack ({', '.join(p['name'] for p in running)}); `realsr stack down --home {self.home}` first")
        t0 = time.monotonic()

        def done(what: str) -> None:
            say(f"[{time.monotonic() - t0:3.0f} s] {what}")

        for sub in ("logs", "prefect", "data/photos", "data/runs", "data/test/lr", "data/test/hr"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        port = self.choose_port(port, say)
        self.port_file.write_text(f"{port}\n")
        env = {**os.environ, **stack_env(self.home, port)}
        state = {"url": env["PREFECT_API_URL"], "ui": f"http://127.0.0.1:{port}", "processes": []}
        self._save(state)
        try:
            done(f"starting the Prefect server on 127.0.0.1:{port} (a fresh database migrates first; logs: {self.home / 'logs'})")
            self._spawn(state, "server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env)
            self._wait(lambda: self._get("/health") is True, 180, "the Prefect server", state)
            done(f"server: {state['ui']} (API {state['url']})")
            for pool in POOLS:
                self._cli(["work-pool", "create", pool, "--type", "process", "--overwrite"], env)
            n = gpus if gpus is not None else _gpu_count()
            self._set_gpu_limit(max(1, n), env)
            done(f"pools: {', '.join(POOLS)}; tag limit gpu = {max(1, n)} ({n} GPUs here)")
            self._cli(["--no-prompt", "deploy", *(arg for name in process_deployments() for arg in ("--name", name))], env, timeout=600)
            done("deployments: " + ", ".join(sorted(d["name"] for d in self._get("/deployments/filter", {}) or [])))
            for pool, count in (("cpu-pool", cpu_workers), ("gpu-pool", gpu_workers)):
                for i in range(count):
                    name = f"{pool.split('-')[0]}-worker-{i + 1}"
                    self._spawn(state, name, ["worker", "start", "--pool", pool, "--name", name], env)
                self._wait(lambda pool=pool, count=count: self._online(pool) >= count, 120, f"{count} worker(s) on {pool}", state)
                done(f"workers: {count} on {pool}")
        except BaseException:
            self.down(say=lambda m: None)
            raise
        (self.home / "env").write_text("".join(f"export {k}={json.dumps(v)}\n" for k, v in stack_env(self.home, port).items()))
        say(f"point the CLI at it:  source {self.home / 'env'}")
        return state

    def down(self, say=print) -> list[str]:
        """Stop every process of the stack (workers, then the server) by process group."""
        if not self.home.is_dir():
            raise StackError(f"{self.home}: no such folder (give the --home of `realsr stack up`)")
        state = self.read()
        if not state:
            say(f"no stack in {self.home} (no stack.json): nothing to stop")
            return []
        stopped = []
        processes = sorted(state.get("processes", []), key=lambda p: p["name"] == "server")
        for p in processes:
            if p["name"] == "server":  # the flow runs first: Prefect starts each in a session of its own
                servers = {q["pid"] for q in processes if q["name"] == "server"}
                if left := [pid for pid in self._descendants() if pid not in servers]:
                    _stop_all(left)
                    stopped.append(f"{len(left)} flow-run process(es)")
            if _alive(p["pid"]):
                _stop_group(p["pid"])
                stopped.append(p["name"])
        if self.file.exists():
            self.file.unlink()
        say(f"stopped in {self.home}: {', '.join(stopped) or 'nothing was running'}")
        return stopped

    def start_worker(self, name: str, pool: str, env: dict[str, str] | None = None) -> int:
        """One more process worker on `pool`, `env` over the stack's environment (another
        machine's HOME and caches, its store's endpoint), waited for until the server lists it
        online; `down` stops it with the rest. Returns its pid."""
        state = self.read()
        port = int(state["ui"].rsplit(":", 1)[1])
        self._spawn(state, name, ["worker", "start", "--pool", pool, "--name", name], {**os.environ, **stack_env(self.home, port), **(env or {})})
        workers = lambda: self._get(f"/work_pools/{pool}/workers/filter", {}) or []  # noqa: E731
        self._wait(lambda: any(w.get("name") == name and w.get("status") == "ONLINE" for w in workers()), 120, name, state)
        return state["processes"][-1]["pid"]

    def forget(self, pid: int) -> None:
        """A process that went away on purpose (a host taken down): no longer waited on or stopped."""
        if state := self.read():
            self._save({**state, "processes": [p for p in state["processes"] if p["pid"] != pid]})

    def _get(self, path: str, body: dict | None = None):
        url = self.read()["url"] + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read() or b"null")
        except (OSError, ValueError):
            return None

    def _online(self, pool: str) -> int:
        workers = self._get(f"/work_pools/{pool}/workers/filter", {}) or []
        return sum(1 for w in workers if w.get("status") == "ONLINE")

    def _wait(self, ready, timeout: float, what: str, state: dict) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p["name"] for p in state["processes"] if not _alive(p["pid"])]
            if dead:
                raise StackError(f"{', '.join(dead)} exited while waiting for {what} (see {self.home / 'logs'})")
            if time.monotonic() > deadline:
                raise StackError(f"{what} not ready after {timeout:.0f} s (see {self.home / 'logs'})")
            time.sleep(0.5)

    def _cli(self, args: list[str], env: dict, timeout: float = 120) -> str:
        for attempt in range(3):  # a server busy migrating or answering may refuse a connection once (seen on 2 cores)
            p = subprocess.run([_prefect(), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            if not p.returncode:
                return p.stdout
            if "All connection attempts failed" not in p.stdout + p.stderr or attempt == 2:
                raise StackError(f"prefect {' '.join(args)} failed: {(p.stdout + p.stderr).strip()[-2000:]}")
            time.sleep(2)

    def _set_gpu_limit(self, n: int, env: dict) -> None:
        """Training and evaluation tasks carry the `gpu` tag: at most n of them hold a GPU at once."""
        if any(c.get("tag") == "gpu" for c in (self._get("/concurrency_limits/filter", {}) or [])):
            self._cli(["concurrency-limit", "delete", "gpu"], env)
        self._cli(["concurrency-limit", "create", "gpu", str(n)], env)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no torch CUDA here: the CPU fallback takes one slot
        return 0


def _reap(pid: int, seconds: float) -> bool:
    """Wait up to `seconds` for `pid` to exit (reaping it when it is our child); True when it has."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _alive(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _stop_all(pids: list[int]) -> None:
    """SIGTERM to each, SIGKILL to those alive after the grace."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _reap(pid, STOP_GRACE_S)
    try:
        os.killpg(pid, signal.SIGKILL)  # the rest of the group too (a worker's flow runs)
    except ProcessLookupError:
        pass
    _reap(pid, 10)


def add_parser(sub) -> None:
    add_arguments(sub.add_parser("stack", help="a Prefect server, pools, deployments and workers on this machine: up, down, status"))


def add_arguments(p) -> None:
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--home", type=Path, required=True, help="the stack's folder (database, logs, env, data)")
    p.add_argument("--port", type=int, default=None, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--cpu-workers", type=int, default=1)
    p.add_argument("--gpu-workers", type=int, default=1)
    p.add_argument("--gpus", type=int, default=None, help="the gpu tag limit (default: the GPUs torch sees, at least 1)")


def _say(line: str) -> None:
    print(line, flush=True)  # each step as it completes, also into a pipe or a log file


def run(args) -> int:
    stack = Stack(args.home)
    if args.action == "up":
        stack.up(args.port, args.cpu_workers, args.gpu_workers, args.gpus, say=_say)
    elif args.action == "down":
        stack.down(say=_say)
    else:
        state = stack.read()
        gone = [p["name"] for p in state.get("processes", []) if not _alive(p["pid"])]
        for proc in state.get("processes", []):
            print(f"{proc['name']}: pid {proc['pid']} {'GONE' if proc['name'] in gone else 'running'}")
        print(f"UI: {state['ui']}" if state else f"no stack in {stack.home}")
        if not state:
            return 2
        if gone:  # the exit-code rule: some of the stack is down (1), all of it (2)
            print(f"{len(gone)} of {len(state['processes'])} processes gone: `realsr stack down` then `up` restarts the stack", file=sys.stderr)
            return outcome(len(state["processes"]) - len(gone), len(gone))
    return 0
