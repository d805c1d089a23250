"""`realsr train RUN_DIR --out TRAIN_DIR [--preset ...] [--init CKPT] [--auto-resume] ...`.

Every TrainSettings field is a flag (`--lr-g`, `--no-noise`, `--milestones 1000,2000`); a flag
not given leaves the preset's value.
"""

from __future__ import annotations

import sys

from realsr.flows.cli_fields import add_fields, given
from realsr.storage.remote import is_url, mirrored

_SKIP = {"run_dir", "out", "preset", "resume"}


def add_parser(sub) -> None:
    from realsr.flows.train_settings import PAPER, PRESETS, TrainSettings

    t = sub.add_parser("train", help="train or fine-tune the SR generator on a degrade-flow run's degradations")
    t.add_argument("run_dir", help="degrade-flow run folder (a path, or a URL such as s3://bucket/runs/cam1)")
    t.add_argument("--out", required=True, help="training folder (checkpoints, logs, samples; a path or a URL)")
    t.add_argument("--preset", default="paper", choices=list(PRESETS), help="bundle of settings to start from (default paper)")
    t.add_argument("--resume", dest="resume", action="store_const", const="require", default="no", help="continue from the newest state (fail if none)")
    t.add_argument("--auto-resume", dest="resume", action="store_const", const="auto", help="continue from the newest state if there is one")
    t.add_argument(
        "--runtime",
        default="prefect",
        choices=["prefect", "local"],
        help="prefect: as train-flow (an embedded API unless PREFECT_API_URL is set); local: in this process, with a progress bar",
    )
    add_fields(t, TrainSettings, _SKIP, lambda name, _: f" (default: the preset's; paper {PAPER.get(name)})")


def settings_from(args):
    from realsr.flows.train_settings import TrainSettings

    return TrainSettings.from_preset(args.preset, run_dir=args.run_dir, out=args.out, resume=args.resume, **given(args, TrainSettings, _SKIP))


def describe(settings) -> str:
    """The resolved settings, printed at the start (train.json in the folder keeps them)."""
    fields = settings.model_dump(mode="json")
    return f"preset {settings.preset}: " + ", ".join(f"{k}={fields[k]}" for k in fields if k not in ("run_dir", "out", "preset"))


def run(args) -> int:
    """`realsr train`: 0 when training reached its last iteration."""
    from realsr.flows import preflight

    settings = settings_from(args)
    print(describe(settings), file=sys.stderr)
    preflight.train(settings)
    if args.runtime == "prefect":
        from realsr.flows.runtime import prefect_api
        from realsr.flows.train import summary_markdown, train_flow
        from realsr.steps.mirrors import held

        with held(settings.run_dir, settings.out, "run", "train"), prefect_api():  # a second run is refused before the server starts
            summary = train_flow(settings)
    else:
        from realsr.flows.train import staged_training, summary_markdown
        from realsr.steps.train import train

        say = lambda m: print(m, file=sys.stderr)  # noqa: E731
        summary, local = staged_training(settings, lambda s: train(s.spec(), log=say), say)
    print(summary_markdown(summary))
    model = summary["latest"]
    if is_url(model):  # upscale reads local files: the mirror holds the same file
        model = str(mirrored(str(settings.out), "train", model))
    print(f"upscale with:  realsr upscale -i PHOTOS -o OUT --model {model}")
    return 0
