"""vbes.training: (to be built)."""

__all__: list[str] = []
