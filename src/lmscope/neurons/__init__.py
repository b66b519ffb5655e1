"""One neuron: recording (statistics, max-activating examples), correlation, ablation and
dose-response, the atlas of every neuron decoded through the LM head, and clamping."""

from lmscope.neurons.atlas import AtlasConfig, build_atlas, decode_neuron, load_atlas
from lmscope.neurons.causal import ablate, ablation_curve, dose_response
from lmscope.neurons.clamp import ClampConfig, clamp_experiment
from lmscope.neurons.correlation import correlate
from lmscope.neurons.recording import NeuronRecording, RecordConfig, record

__all__ = ["AtlasConfig", "ClampConfig", "NeuronRecording", "RecordConfig", "ablate", "ablation_curve",
           "build_atlas", "clamp_experiment", "correlate", "decode_neuron", "dose_response", "load_atlas", "record"]
