"""vbes.evaluation: does a sample reproduce the reference -- and how sure are we? (being built)"""

__all__: list[str] = []
