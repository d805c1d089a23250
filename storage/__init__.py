"""What touches disk and nothing else: images, Zarr banks, run and training folders, checkpoints,
training states, weights (found, fetched, verified), atomic writes. No Prefect, no steps."""
