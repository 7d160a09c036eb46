"""vbes.models: (to be built)."""

__all__: list[str] = []
