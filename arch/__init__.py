"""postformer.arch: mixers, blocks, language models and their configs.

    from postformer.arch import ModelConfig, LanguageModel
    model = LanguageModel(ModelConfig.from_preset("gla", "tiny"))
"""

from .attention import Attention, attend, attention_backend
from .config import PRESETS, ModelConfig
from .deltanet_gdn import DeltaNet, GatedDeltaNet
from .gla import GLA
from .hgrn2 import HGRN2
from .layers import GatedRMSNorm, RMSNorm, Rotary, SwiGLU
from .mamba import Mamba
from .mamba2 import Mamba2
from .mixer import Mixer
from .model import Block, LanguageModel, ModelCache
from .registry import MIXERS, get_mixer
from .retnet import RetNet
from .rglru import RGLRU
from .swa import SlidingWindowAttention

__all__ = [
    "MIXERS",
    "PRESETS",
    "GLA",
    "HGRN2",
    "Attention",
    "Block",
    "DeltaNet",
    "GatedDeltaNet",
    "GatedRMSNorm",
    "LanguageModel",
    "Mamba",
    "Mamba2",
    "RGLRU",
    "SlidingWindowAttention",
    "Mixer",
    "ModelCache",
    "ModelConfig",
    "RetNet",
    "RMSNorm",
    "Rotary",
    "SwiGLU",
    "attend",
    "attention_backend",
    "get_mixer",
]
