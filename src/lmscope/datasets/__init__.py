"""Datasets: one loader for every shipped file (`shipped`), user files (`files`), the corpus,
contrast sets and in-context tasks. Depends only on the engine (tokenization)."""
