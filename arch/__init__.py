"""postformer.arch: mixers, blocks, language models and their configs.

    from postformer.arch import ModelConfig, LanguageModel
    model = LanguageModel(ModelConfig.from_preset("gla", "tiny"))
"""

from .attention import Attention, attend, attention_backend
from .config import PRESETS, ModelConfig
from .gla import GLA
from .layers import GatedRMSNorm, RMSNorm, Rotary, SwiGLU
from .mamba2 import Mamba2, causal_conv1d, causal_conv1d_step
from .mixer import Mixer
from .model import Block, LanguageModel, ModelCache
from .registry import MIXERS, get_mixer

__all__ = [
    "MIXERS",
    "PRESETS",
    "GLA",
    "Attention",
    "Block",
    "GatedRMSNorm",
    "LanguageModel",
    "Mamba2",
    "Mixer",
    "ModelCache",
    "ModelConfig",
    "RMSNorm",
    "Rotary",
    "SwiGLU",
    "attend",
    "attention_backend",
    "causal_conv1d",
    "causal_conv1d_step",
    "get_mixer",
]
