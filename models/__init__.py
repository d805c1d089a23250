"""The paper's mathematics: kernels, clean-up, noise selection and injection. No Prefect, no disk."""
