"""Placeholder: the vectors panel routes (being written)."""


def add_routes(studio) -> None:
    pass
