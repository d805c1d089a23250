"""The top floor: Prefect flows (degrade-flow, train-flow, evaluate-flow), their pydantic
parameters and the typed step inputs built from them, the embedded runtime and the `realsr` CLI."""
