"""Everything that touches disk: images, Zarr banks, run folders, atomic writes. No Prefect."""
