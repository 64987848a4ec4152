"""Errors shared by the runtime's modules (kept free of heavy imports: the CLI loads them)."""


class PlacementError(RuntimeError):
    """A host that no Ray node can take; the message names the host and what is missing."""
