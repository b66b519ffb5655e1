"""One neuron: recording (statistics, max-activating examples), correlation, ablation and
dose-response, the atlas of every neuron decoded through the LM head, and clamping."""

from lmscope.engine.lazy import lazy_exports

_EXPORTS = {  # name -> module of this family
    "AtlasConfig": "atlas", "build_atlas": "atlas", "decode_neuron": "atlas", "load_atlas": "atlas",
    "ClampConfig": "clamp", "clamp_experiment": "clamp",
    "NeuronRecording": "recording", "RecordConfig": "recording", "record": "recording",
    "ablate": "causal", "ablation_curve": "causal", "dose_response": "causal",
    "correlate": "correlation",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
