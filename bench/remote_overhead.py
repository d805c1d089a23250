"""The pipeline across two hosts through S3 against the same pipeline on local disk, and the bytes
each host downloads, on one machine.

    .venv/bin/python bench/remote_overhead.py --photos 60 [--repeats 2] [--work /tmp/remote-bench]

A real Prefect server (`realsr stack up`, no workers of its own), two worker "hosts" (cpu-pool and
gpu-pool; each its own HOME, cache, temp and Prefect home), moto's S3 server on loopback, and in
front of it one counting proxy per host (the bytes each host sends and receives). The photos are
`bench/degrade_throughput.py`'s 1-2 MP set. Rows, alternated `--repeats` times:
- local: the pipeline deployment with `source` and `out` local folders (the hosts share this
  machine's disk), stages as deployments;
- s3: the same with both at s3:// (the photos put there beforehand, as a user's are);
- s3 rerun, fresh host: host A replaced by a host that has never seen the run; nothing changed.
The preset is `demo` with bicubic kernels by default (`--degrade`, `--train`): KernelGAN's minutes
per photo would hide any transfer cost. Wall time is from the run's creation to COMPLETED.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from degrade_throughput import make_sources  # noqa: E402

from realsr.flows.stack import Stack, _alive, free_port  # noqa: E402

BUCKET = "bench"


class Counter:
    """A reverse proxy to the S3 server that counts the bytes a host moves through it."""

    def __init__(self, target_port: int):
        self.sent = self.received = 0
        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection("127.0.0.1", target_port, timeout=300)
                conn.request(self.command, self.path, body=body, headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                r = conn.getresponse()
                data = r.read()
                counter.sent += len(body)
                counter.received += len(data)
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                # a HEAD answers with the object's length, and no body
                self.send_header("Content-Length", r.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> tuple[int, int]:
        out = (self.sent, self.received)
        self.sent = self.received = 0
        return out


def api(stack: Stack, path: str, body=None):
    for _ in range(10):  # None: the server busy (503) or not answering, asked again
        if (got := stack._get(path, body)) is not None:
            return got
        time.sleep(1)
    raise SystemExit(f"the Prefect server does not answer {path}")


def run_pipeline(stack: Stack, settings: dict) -> tuple[float, dict]:
    dep = api(stack, "/deployments/name/realsr-pipeline/pipeline")
    t0 = time.perf_counter()
    run_id = api(stack, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"settings": settings}})["id"]
    while True:
        run = api(stack, f"/flow_runs/{run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            if run["state_type"] != "COMPLETED":
                raise SystemExit(f"{run['name']}: {run['state_type']} {run['state']['message']}")
            return time.perf_counter() - t0, run
        time.sleep(0.5)


def start_host(stack: Stack, name: str, pool: str, root: Path, s3_port: int) -> int:
    """A worker as another machine runs it: its own HOME, caches and temp; S3 through its counter."""
    for sub in ("home", "cache", "tmp", "prefect"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    own = {k: str(root / v) for k, v in {"HOME": "home", "XDG_CACHE_HOME": "cache", "TMPDIR": "tmp", "PREFECT_HOME": "prefect"}.items()}
    return stack.start_worker(name, pool, {**own, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}"})


def stop_host(stack: Stack, pid: int) -> None:
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    stack.forget(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--degrade", default='{"kernels": "bicubic"}')
    ap.add_argument("--train", default="{}")
    ap.add_argument("--order", default="local,s3", help="the rows of each repeat, in this order (the first row of a call runs on cold caches)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/remote-bench"))
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "remote_overhead.jsonl")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: the stack and the S3 server still go (finally)
    shutil.rmtree(args.work, ignore_errors=True)
    photos = args.work / "photos"
    mp = make_sources(photos, args.photos)
    s3_port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    stack = Stack(args.work / "stack")
    rows = []
    try:
        time.sleep(3)
        import fsspec

        fs = fsspec.filesystem("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        fs.put([str(p) for p in sorted(photos.iterdir())], [f"{BUCKET}/photos/{p.name}" for p in sorted(photos.iterdir())])
        stack.up(cpu_workers=0, gpu_workers=0, say=lambda m: None)
        proxies = {h: Counter(s3_port) for h in ("a", "b", "c")}
        a = start_host(stack, "host-a", "cpu-pool", args.work / "host-a", proxies["a"].port)
        start_host(stack, "host-b", "gpu-pool", args.work / "host-b", proxies["b"].port)
        common = {"preset": args.preset, "stages": "deployments", "degrade": json.loads(args.degrade), "train": json.loads(args.train)}
        for i in range(args.repeats):
            for where in args.order.split(","):
                src, out = (str(photos), str(args.work / f"local-{i}")) if where == "local" else (f"s3://{BUCKET}/photos", f"s3://{BUCKET}/run-{i}")
                [p.reset() for p in proxies.values()]
                seconds, _ = run_pipeline(stack, {**common, "source": src, "out": out})
                moved = {h: p.reset() for h, p in proxies.items()}
                rows.append({"row": where, "repeat": i, "seconds": round(seconds, 1), "bytes": moved})
                print(json.dumps(rows[-1]), flush=True)
        stop_host(stack, a)
        start_host(stack, "host-c", "cpu-pool", args.work / "host-c", proxies["c"].port)
        [p.reset() for p in proxies.values()]
        seconds, _ = run_pipeline(stack, {**common, "source": f"s3://{BUCKET}/photos", "out": f"s3://{BUCKET}/run-0"})
        rows.append({"row": "s3 rerun, fresh host", "repeat": 0, "seconds": round(seconds, 1), "bytes": {h: p.reset() for h, p in proxies.items()}})
        print(json.dumps(rows[-1]), flush=True)
    finally:
        stack.down(say=lambda m: None)
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait(30)
    record = {"photos": args.photos, "megapixels": round(mp, 1), "preset": args.preset, "degrade": args.degrade, "rows": rows, "cores": os.cpu_count()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with args.json.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print("| row | repeat | seconds | host A down / up MB | host B down / up MB | fresh host down / up MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mb = {h: f"{r['bytes'][h][1] / 1e6:.2f} / {r['bytes'][h][0] / 1e6:.2f}" for h in ("a", "b", "c")}
        print(f"| {r['row']} | {r['repeat']} | {r['seconds']} | {mb['a']} | {mb['b']} | {mb['c']} |")


if __name__ == "__main__":
    main()
