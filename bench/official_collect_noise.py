"""Run the released RealSR noise collection (Tencent/Real-SR `codes/preprocess/collect_noise.py`)
unmodified on a folder of PNG photos.

The reference code is not part of this project: pass a checkout of its repository
(`git clone https://github.com/Tencent/Real-SR`). Nothing in it is edited. The script reads its
folders from `./preprocess/paths.yml` relative to the working directory, so this launcher writes
that file (the configuration the reference expects its user to edit) in a scratch working
directory, with `--dataset df2k --artifacts tdsr` pointing at the photos (the df2k settings: 256
px patches, luma variance < 20, mean > 0), and patches the run time only:
- `yaml.load(stream)` without a Loader, which PyYAML 6 refuses, gets PyYAML's SafeLoader.
Then it runs the script as `__main__`. Its patches land in OUT as `<photo>_<idx>.png`, exactly
as the reference writes them:

    python bench/official_collect_noise.py --repo ~/src/Real-SR --images DIR --out DIR
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
from pathlib import Path


def patch_runtime() -> None:
    import yaml

    plain = yaml.load
    yaml.load = lambda stream, Loader=yaml.SafeLoader, **kw: plain(stream, Loader=Loader, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="checkout of Tencent/Real-SR")
    ap.add_argument("--images", type=Path, required=True, help="folder of .png photos (the script globs *.png)")
    ap.add_argument("--out", type=Path, required=True, help="where the noise patches go (must not exist: the script asserts it)")
    args = ap.parse_args()
    script = args.repo.resolve() / "codes" / "preprocess" / "collect_noise.py"
    if not script.exists():
        sys.exit(f"{script} not found: --repo must be a checkout of Tencent/Real-SR")
    out = args.out.resolve()
    if out.name != "Corrupted_noise":
        sys.exit("--out must end in Corrupted_noise: the script appends that name to the df2k dataset folder")
    patch_runtime()
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "preprocess").mkdir()
        (Path(work) / "preprocess" / "paths.yml").write_text(f"df2k:\n  tdsr:\n    source: '{args.images.resolve()}'\ndatasets:\n  df2k: '{out.parent}'\n")
        os.chdir(work)
        sys.argv = [str(script), "--dataset", "df2k", "--artifacts", "tdsr"]
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
