"""Thin Prefect tasks over `steps`: names in the UI, retries, the `gpu` tag, progress in the log."""
