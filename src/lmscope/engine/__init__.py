"""The engine: the only code that touches the Hugging Face model.

load -> Model (sites, tokenizer) -> hooks (capture / intervene) -> runner (run, generate, the
prefix-cached last-token run) -> readout (final norm, token space) and metrics. Technique
families build on these and never reach into `model.hf`. See ARCHITECTURE.md.
"""
