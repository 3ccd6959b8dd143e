"""Our crash-safe files beside the state: upstream's 14-key state file, its lock and WAL pointer,
the self-checking round journal (durability modes, rotation), the identity sidecar and the per-blob
history. Imports only the core.
"""
