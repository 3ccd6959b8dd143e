"""What an operator runs or scrapes: `status`, metrics, `index adopt`, wall-clock pacing.

Imports only the core and persist layers (no Hydra, no pydantic), so these commands start fast and
work beside a running service.
"""
