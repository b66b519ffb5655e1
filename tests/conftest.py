"""Fixtures: tiny random models of every family in the architecture table (built from
configs, no download), and the two real embedded models (session-scoped; marked slow)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
FAMILY_CONFIGS = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "phi3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "gemma2": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16, "sliding_window": 8},
    "olmo2": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "gpt2": None,
    "gpt_neox": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
}


class TinyTokenizer:
    """Enough of a HF tokenizer for the engine: one char = one token, left padding."""

    pad_token = "<pad>"
    eos_token = "<eos>"
    pad_token_id = 0
    eos_token_id = 2
    chat_template = None
    padding_side = "left"

    def __call__(self, texts, return_tensors=None, padding=False, add_special_tokens=True):
        single = isinstance(texts, str)
        seqs = [[1] * add_special_tokens + [3 + (ord(c) % 120) for c in t] for t in ([texts] if single else texts)]
        if return_tensors != "pt":
            return {"input_ids": seqs[0] if single else seqs}
        n = max(map(len, seqs))
        ids = torch.tensor([[0] * (n - len(s)) + s for s in seqs])
        mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs])
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(97 + (int(i) % 26)) for i in ids)

    def batch_decode(self, seqs, skip_special_tokens=False):
        return [self.decode(s) for s in seqs]


def make_tiny(model_type: str, seed: int = 0):
    """A random HF causal LM of `model_type`, wrapped as a lmscope Model (float32, eval)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import lmscope

    extra = FAMILY_CONFIGS[model_type]
    if model_type == "gpt2":
        cfg = AutoConfig.for_model("gpt2", n_embd=64, n_layer=3, n_head=4, n_inner=96, vocab_size=128,
                                   n_positions=256, bos_token_id=1, eos_token_id=2)
    else:
        cfg = AutoConfig.for_model(model_type, **{**TINY, **extra})
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    # random norms/biases so that no weight is trivially 1 or 0
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return lmscope.Model(hf, TinyTokenizer(), name=f"tiny-{model_type}")


@pytest.fixture(params=sorted(FAMILY_CONFIGS))
def tiny(request):
    return make_tiny(request.param)


@pytest.fixture(scope="session")
def gemma():
    import lmscope

    return lmscope.load("gemma-3-270m")


@pytest.fixture(scope="session")
def smollm():
    import lmscope

    return lmscope.load("smollm2-135m-instruct")


@pytest.fixture
def tiny_llama():
    """One tiny random llama (for tests that need a model but no family sweep)."""
    return make_tiny("llama")


@pytest.fixture
def no_load(monkeypatch):
    """CLI tests: a model load fails the test (the arguments should have been rejected first)."""
    from lmscope.engine import loading

    def boom(*a, **k):
        raise AssertionError("the model was loaded although the arguments were bad")

    monkeypatch.setattr(loading, "load", boom)


@pytest.fixture
def tiny_load(monkeypatch):
    """CLI tests: every model load returns one tiny random llama."""
    from lmscope.engine import loading

    model = make_tiny("llama")
    monkeypatch.setattr(loading, "load", lambda *a, **k: model)
    return model
