"""Prefect flows (degrade-flow), their parameters, the embedded runtime and the command line."""
