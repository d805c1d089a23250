"""Each flow's steps, free of Prefect: what happens to one photo, one bank, one model, one run.

One module per flow (degrade, train, evaluate, upscale, inspect); the CLI, the Prefect tasks and
the flows call the same functions. Steps combine `models` (the mathematics) with `storage` (the
files); each takes a typed spec built in `flows/` from the pydantic settings.
"""
