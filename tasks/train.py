"""train-flow's task: one training run holds the device from the first iteration to the last."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from realsr.steps import train as training


@task(name="train-generator", tags=["gpu"], cache_policy=NO_CACHE, task_run_name="train-{settings.preset}")
def train_generator(settings) -> dict:
    """Train or fine-tune as the settings say; progress and validation go to the Prefect log."""
    log = get_run_logger()
    return training.train(settings.spec(), log=log.info, bar=False)
