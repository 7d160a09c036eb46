"""vbes.serving: (to be built)."""

__all__: list[str] = []
