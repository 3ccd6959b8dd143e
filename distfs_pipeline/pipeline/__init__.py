"""The configured pipeline around the core: Hydra structured config, pydantic validation, the legacy
flag shim, pre-flight and config guard, JSON schemas, the runner (clock, signals, persistence,
logs), the run summary and the demo store.
"""
