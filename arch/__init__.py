"""postformer.arch: mixers, blocks, language models and their configs.

    from postformer.arch import ModelConfig, LanguageModel
    model = LanguageModel(ModelConfig.from_preset("gla", "tiny"))
"""

from .attention import Attention, attend, attention_backend
from .config import PRESETS, ModelConfig
from .deltanet_gdn import DeltaNet, GatedDeltaNet
from .deltaproduct import GatedDeltaProduct
from .gated_attn import GatedAttention
from .gla import GLA
from .hgrn2 import HGRN2
from .kda import KimiDeltaAttention
from .layers import GatedRMSNorm, RMSNorm, Rotary, SwiGLU
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba3 import Mamba3
from .mixer import Mixer
from .mlstm import MLSTM
from .model import Block, LanguageModel, ModelCache
from .registry import MIXERS, get_mixer, width_options
from .retnet import RetNet
from .rglru import RGLRU
from .rwkv7 import RWKV7
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
    "GatedDeltaProduct",
    "GatedAttention",
    "KimiDeltaAttention",
    "MLSTM",
    "Mamba3",
    "RWKV7",
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
    "width_options",
]
