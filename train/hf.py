"""A ``transformers`` face for exported models (the ``hf`` extra): ``AutoModelForCausalLM``.

An export folder (``postformer export``, ``LanguageModel.save_pretrained``) holds::

    config.json        {"model_type": "postformer", "architectures": ["PostformerForCausalLM"],
                        "postformer_version", "vocab_size", "model": asdict(ModelConfig),
                        "tokenizer": "bytes" | "tokenizer.json", "eos_token_id", "torch_dtype"}
    model.safetensors  the LanguageModel's state_dict (tied embedding/head stored once)
    tokenizer.json     (+ tokenizer_config.json) for a BPE; none for bytes

After ``register()`` (idempotent; importing this module does it)::

    from postformer.train import hf
    model = AutoModelForCausalLM.from_pretrained(DIR)     # a PostformerForCausalLM
    model.generate(input_ids, max_new_tokens=8, do_sample=False)

``PostformerForCausalLM`` wraps a ``LanguageModel`` (``.language_model``) whose children
(``embedding``, ``blocks``, ``norm``, ``lm_head``) it registers as its own, so its parameter
names are the export's keys as they are (``embedding.weight``, ``blocks.0...``): transformers
loads and saves ``model.safetensors`` with no key mapping (which differs between transformers
4 and 5), and both sides read and write the same file.

Generation carries our own recurrent state: the first forward (the prompt, in the parallel
form) makes a ``ModelCache`` and returns it, wrapped in ``RecurrentCache``, as the output's
``cache`` (``past_key_values`` on transformers 4.x); ``generate`` hands it back on every step
and ``prepare_inputs_for_generation`` feeds only the tokens the cache has not seen (one per
step). ``_supports_default_dynamic_cache`` is False, so transformers never builds a KV cache of
its own for us (as for RWKV, xLSTM). Tested on transformers 5 (the 4.x names are handled but
untested). Not supported: padding (an attention mask with
zeros raises: a recurrence has no mask; generate one prompt length per batch), beam search
(the state is not reordered; ``generate`` refuses ``num_beams > 1``). ``labels`` gives the usual shifted cross-entropy.

``byte_tokenizer()`` builds a ``tokenizers.Tokenizer`` whose ids are the byte values (vocab
256, NUL = id 0 the end of text), for exports of byte-level models that want a
``tokenizer.json`` for transformers' side.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def unshadow_kernels() -> None:
    """Make ``import kernels`` find the PyPI ``kernels`` package, not our ``kernels/`` folder.

    transformers (5.x) imports the PyPI package ``kernels`` (hub kernels) when it is installed.
    Our ops live in the folder ``kernels/`` at the repository root (installed as
    ``postformer.kernels`` through an editable finder that maps folders, so the root itself
    need not be on ``sys.path``). When the root *is* on ``sys.path`` (``python -m pytest`` or
    ``python -c`` run from the root put the cwd, ``''``, first), ``import kernels`` finds our
    folder and transformers fails with "cannot import name 'CUDAProperties' from 'kernels'".

    The fix: with every ``sys.path`` entry whose ``kernels/`` is our package's folder taken out
    for a moment, import the real ``kernels`` (when installed) so that ``sys.modules["kernels"]``
    is it; later lazy imports by transformers then find it there. ``sys.path`` is restored
    afterwards, so nothing else about the process changes. Our own code never imports the
    top-level name ``kernels`` (always ``postformer.kernels``); a stray ``kernels`` module
    that is our folder is dropped from ``sys.modules`` first. Without the PyPI package nothing
    is imported and transformers' version check on the distribution says it is absent.
    """
    spec = importlib.util.find_spec("postformer.kernels")
    if spec is None or not spec.submodule_search_locations:
        return
    ours = {Path(p).resolve() for p in spec.submodule_search_locations}

    def shadows(entry: str) -> bool:
        try:
            return (Path(entry or os.getcwd()) / "kernels").resolve() in ours
        except OSError:
            return False

    loaded = sys.modules.get("kernels")
    if loaded is not None:
        where = getattr(loaded, "__path__", None) or []
        if not any(Path(p).resolve() in ours for p in where):
            return  # already the real one (or someone else's): leave it
        for name in [n for n in sys.modules if n == "kernels" or n.startswith("kernels.")]:
            del sys.modules[name]
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if not shadows(p)]
    try:
        if importlib.util.find_spec("kernels") is not None:
            importlib.import_module("kernels")
    except Exception:  # a broken hub-kernels install: transformers will say so itself
        pass
    finally:
        sys.path[:] = saved


unshadow_kernels()

from transformers import (  # noqa: E402  (after unshadow_kernels, on purpose)
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

from postformer.arch.config import ModelConfig  # noqa: E402
from postformer.arch.layers import Rotary  # noqa: E402
from postformer.arch.model import LanguageModel, ModelCache  # noqa: E402

MODEL_TYPE = "postformer"
# transformers 5 names the cache ``cache`` in model outputs and inputs, 4.x ``past_key_values``
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class PostformerConfig(PretrainedConfig):
    """config.json of an export: ``model`` is ``dataclasses.asdict(ModelConfig)``; ``tokenizer``
    is ``"bytes"`` or the name of the tokenizer file beside it."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        tokenizer: str = "bytes",
        postformer_version: str | None = None,
        eos_token_id: int | None = 0,
        **kwargs: Any,
    ) -> None:
        model = dict(model) if model is not None else dataclasses.asdict(ModelConfig())
        self.model = model
        self.tokenizer = tokenizer
        self.postformer_version = postformer_version
        kwargs.pop("vocab_size", None)
        self.vocab_size = int(model.get("vocab_size", 256))
        kwargs.setdefault("tie_word_embeddings", bool(model.get("tie_embeddings", True)))
        self.use_cache = bool(kwargs.pop("use_cache", True))
        super().__init__(eos_token_id=eos_token_id, **kwargs)

    def model_config(self) -> ModelConfig:
        """The ``ModelConfig`` this export was built from."""
        return ModelConfig(**self.model)


class RecurrentCache:
    """Our ``ModelCache`` as it travels through ``generate``: duck-typed to what transformers asks
    of a cache it did not make (length, not compileable, not croppable)."""

    is_compileable = False
    is_croppable = False

    def __init__(self, state: ModelCache) -> None:
        self.state = state
        self.seen = 0  # tokens consumed so far

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def __len__(self) -> int:
        return len(self.state.layers)


class PostformerForCausalLM(PreTrainedModel, GenerationMixin):
    """A ``LanguageModel`` behind transformers' causal-LM interface."""

    config_class = PostformerConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _tied_weights_keys = {"lm_head.weight": "embedding.weight"}

    def __init__(self, config: PostformerConfig) -> None:
        super().__init__(config)
        lm = LanguageModel(config.model_config())
        # not a submodule (its names would gain a prefix): its children are registered here
        object.__setattr__(self, "_lm", lm)
        for name, child in lm.named_children():
            self.add_module(name, child)
        if not config.tie_word_embeddings:
            self._tied_weights_keys = {}
        self.post_init()

    @property
    def language_model(self) -> LanguageModel:
        """The wrapped ``LanguageModel``; it shares every module with this wrapper."""
        return self._lm

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("embedding", "blocks", "norm", "lm_head") and "_lm" in self.__dict__:
            setattr(self._lm, name, value)  # a replaced child (resize_token_embeddings) is shared

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # our state is made in forward
        return False

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """Weights come from ``LanguageModel.reset_parameters`` at construction, or the file.

        What ``from_pretrained`` cannot load are the non-persistent buffers: it builds the model
        on the meta device and gives them empty memory, then calls this. The only ones we have
        are RoPE's ``inv_freq`` (``arch.layers.Rotary``), recomputed here as its ``__init__``
        computes it (a test checks that no other module holds such a buffer).
        """
        if isinstance(module, Rotary):
            d = module.head_dim
            inv_freq = module.base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
            module.inv_freq.copy_(inv_freq.to(module.inv_freq.device))

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embedding

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.embedding = value

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: torch.nn.Module) -> None:
        self.lm_head = value

    def _state(self, cache: Any, batch_size: int) -> RecurrentCache:
        if isinstance(cache, RecurrentCache) and cache.state.batch_size == batch_size:
            return cache
        return RecurrentCache(self._lm.new_cache(batch_size))

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' ``generate``, refusing beam search (our state is not reordered by beam)."""
        config = kwargs.get("generation_config") or self.generation_config
        if int(kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1) > 1:
            raise NotImplementedError("PostformerForCausalLM.generate: beam search (num_beams > 1) "
                                      "is not supported; use greedy or sampling")
        return super().generate(*args, **kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Any = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Only the tokens our cache has not seen yet (the prompt first, then one per step)."""
        if inputs_embeds is not None:
            raise ValueError("PostformerForCausalLM.generate takes input_ids, not inputs_embeds")
        state = cache if cache is not None else past_key_values
        inputs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": use_cache}
        if isinstance(state, RecurrentCache) and use_cache is not False:
            if not 0 < state.seen < input_ids.shape[1]:
                raise ValueError(f"the cache has seen {state.seen} tokens, input_ids has {input_ids.shape[1]}")
            input_ids = input_ids[:, state.seen:]
            inputs[_CACHE_FIELD] = state
        inputs["input_ids"] = input_ids
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """``input_ids [B, T]`` -> logits ``[B, T, vocab]``; with ``use_cache`` (the default in
        eval mode) a ``RecurrentCache`` in and out: the input continues what it has seen."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError(
                "PostformerForCausalLM does not take padding (an attention_mask with zeros): a "
                "recurrence has no mask; batch prompts of one length")
        state = cache if cache is not None else past_key_values
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        if use_cache or state is not None:
            state = self._state(state, input_ids.shape[0])
            logits = self._lm(input_ids, state.state)
            state.seen += input_ids.shape[1]
        else:
            logits = self._lm(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: state})
        return out if return_dict is not False else out.to_tuple()


def byte_tokenizer() -> Any:
    """A ``tokenizers.Tokenizer`` whose token ids are byte values (vocab 256, like
    ``ByteTokenizer``): each byte is one token, GPT-2's printable alphabet for the vocabulary
    strings (``ByteLevel``), id 0 (NUL) the end-of-text token. ``save(path)`` writes the
    ``tokenizer.json`` of a byte-level export."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from postformer.train.tokenizer import byte_to_unicode

    vocab = {ch: b for b, ch in byte_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(byte_to_unicode()[0], special=True)])
    return tok


_REGISTERED = False


def register() -> None:
    """Register ``postformer`` with ``AutoConfig`` and ``AutoModelForCausalLM`` (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        AutoConfig.register(MODEL_TYPE, PostformerConfig)
    except ValueError:  # already registered (a reload of this module): keep the first
        pass
    try:
        AutoModelForCausalLM.register(PostformerConfig, PostformerForCausalLM)
    except ValueError:
        pass
    _REGISTERED = True


register()
