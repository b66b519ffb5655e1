"""Placeholder: the function_vectors panel routes (being written)."""


def add_routes(studio) -> None:
    pass
