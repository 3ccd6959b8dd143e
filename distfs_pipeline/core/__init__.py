"""The audit engine: upstream's store layout and codec, the challenge protocol, the scheduler and the
precise policy, one scheduled round, reward inputs.

No Hydra, OmegaConf, pydantic or matplotlib here (a test enforces it), and nothing above this layer
is imported: the core reads the store and our caches, and advances plain state from plain reports.
"""
