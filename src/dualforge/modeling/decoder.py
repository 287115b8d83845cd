"""Decoder LLMs as embedding towers: what a causal LM's tokenizer needs before it can embed.

A decoder (Llama, Qwen2/3, Mistral, Gemma, ...) reads left to right, so its one summary state is
the last token's; pooling ``last`` finds it with left and right padding alike
(:func:`dualforge.modeling.pooling.last_token_pool`). Three tokenizer rules make that state the
same in training, in dualforge's encoders and in sentence-transformers:

* a pad token: decoders often have none; the EOS token pads (the attention mask hides it);
* EOS at the end of every text (``append_eos``): most decoder embedders (e5-mistral, Qwen3-
  Embedding) pool the state of an appended EOS. It is added by the tokenizer's own post-processor,
  so truncation keeps it and a saved folder's ``tokenizer.json`` appends it for every reader;
* no ``token_type_ids`` (decoders take none).
"""

from __future__ import annotations

from typing import Any, Literal

PaddingSide = Literal["left", "right"]


def is_decoder(config: Any) -> bool:
    """Whether a transformers config is a causal LM that is not also a masked LM (BERT-style
    models register both heads; Llama, Qwen2, Mistral, Gemma only the causal one)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    kind = type(config)
    causal = kind in MODEL_FOR_CAUSAL_LM_MAPPING
    return causal and kind not in MODEL_FOR_MASKED_LM_MAPPING and not config.is_encoder_decoder


def adds_eos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` already ends every encoded text with its EOS token."""
    eos = tokenizer.eos_token_id
    ids = tokenizer("a")["input_ids"]
    return eos is not None and bool(ids) and ids[-1] == eos


def append_eos(tokenizer: Any) -> bool:
    """Make the tokenizer's post-processor end every text with EOS (a BOS it adds stays first).

    Returns:
        False when it did so already (nothing changed), True when the post-processor changed.

    Raises:
        ValueError: The tokenizer has no EOS token, or no fast backend whose post-processor can
            be set.
    """
    from tokenizers import processors

    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no eos_token to append (set model.append_eos=false)")
    if adds_eos(tokenizer):
        return False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} has no fast backend: cannot append EOS")
    eos, first = tokenizer.eos_token, tokenizer("a")["input_ids"][:1]
    bos = tokenizer.bos_token if first and first[0] == tokenizer.bos_token_id else None
    lead = f"{bos} " if bos else ""
    specials = [(t, tokenizer.convert_tokens_to_ids(t)) for t in dict.fromkeys([bos, eos]) if t]
    template = processors.TemplateProcessing(
        single=f"{lead}$A {eos}", pair=f"{lead}$A {eos} $B:1 {eos}:1", special_tokens=specials
    )
    old = backend.post_processor
    backend.post_processor = (
        template
        if old is None or isinstance(old, processors.TemplateProcessing)
        else processors.Sequence([old, template])
    )
    return True


def prepare_tokenizer(
    tokenizer: Any, *, eos: bool, padding_side: PaddingSide | None = None
) -> None:
    """Give a decoder's tokenizer a pad token, no token types, EOS last (``eos``) and the padding
    side asked for (None keeps the tokenizer's)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    if eos:
        append_eos(tokenizer)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
