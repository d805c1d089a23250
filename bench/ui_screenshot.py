"""A screenshot of a pipeline run's artifacts in the Prefect UI, as an operator sees them.

    .venv/bin/python bench/ui_screenshot.py --chromium /path/to/chromium [--preset demo] \
        [--work /tmp/ui-shot] [--out docs/pipeline_run_artifacts.png]

Brings the stack up (`realsr stack up`: server on a free loopback port, pools, deployments,
workers), writes seeded sample photos into its data folder, runs the `realsr-pipeline/pipeline`
deployment (stages as deployments on the CPU and GPU pools) to COMPLETED, opens the run's
`realsr-pipeline` artifact in headless Chromium (Playwright, the `bench` extra) and saves the
page; the stack is taken down by pid afterwards, also on failure. Any Chromium or Chrome works;
it needs no display (`--headless`, software GL).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REALSR = str(Path(sys.executable).with_name("realsr"))
PREFECT = str(Path(sys.executable).with_name("prefect"))


def stack_env(home: Path) -> dict[str, str]:
    """The variables `source HOME/env` would set."""
    env = dict(os.environ)
    for line in (home / "env").read_text().splitlines():
        m = re.fullmatch(r'export (\w+)="(.*)"', line.strip())
        if m:
            env[m[1]] = m[2]
    return env


def api(env: dict, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(env["PREFECT_API_URL"] + path, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def shoot(url: str, chromium: str, out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="networkidle", timeout=120_000)
            page.get_by_text("kernel bank").first.wait_for(timeout=60_000)  # the markdown, with its pictures, is drawn
            page.wait_for_timeout(2000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--chromium", default=os.environ.get("CHROMIUM"), required="CHROMIUM" not in os.environ, help="a Chromium or Chrome executable (or $CHROMIUM)"
    )
    ap.add_argument("--preset", default="demo", help="the pipeline preset (default demo: a fine-tune of x4plus, minutes on a CPU)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/realsr-ui-shot"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "pipeline_run_artifacts.png")
    ap.add_argument("--size", default="1400x1500", help="the browser window, WxH px")
    a = ap.parse_args()
    width, height = map(int, a.size.split("x"))
    home = a.work / "stack"
    subprocess.run([REALSR, "stack", "up", "--home", str(home)], check=True)
    try:
        env = stack_env(home)
        photos = Path(env["REALSR_DATA"]) / "photos"
        subprocess.run([REALSR, "sample", "--out", str(photos)], check=True, env=env, stdout=subprocess.DEVNULL)
        params = {"settings": {"source": str(photos), "out": str(a.work / "pipeline"), "preset": a.preset, "stages": "deployments"}}
        subprocess.run([PREFECT, "deployment", "run", "realsr-pipeline/pipeline", "--params", json.dumps(params), "--watch"], check=True, env=env)
        found = api(env, "/artifacts/filter", {"artifacts": {"key": {"any_": ["realsr-pipeline"]}}, "sort": "CREATED_DESC", "limit": 1})
        if not found:
            raise SystemExit("the pipeline run published no realsr-pipeline artifact")
        ui = env["PREFECT_API_URL"].removesuffix("/api")
        shoot(f"{ui}/artifacts/artifact/{found[0]['id']}", a.chromium, a.out, width, height)
        print(f"wrote {a.out} (flow run {found[0]['flow_run_id']})")
    finally:
        subprocess.run([REALSR, "stack", "down", "--home", str(home)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
