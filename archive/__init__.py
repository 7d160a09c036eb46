"""vbes.archive: (to be built)."""

__all__: list[str] = []
