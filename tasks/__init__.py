"""Thin Prefect tasks over `storage.stages`: logging, retries, tags, names in the UI."""
