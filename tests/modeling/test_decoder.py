"""Decoder towers: EOS appended by the tokenizer, last-token and mean pooling under left and right
padding equal a per-row reference, folder defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dualforge.modeling import DualEncoder, Encoder, load_model
from dualforge.modeling.decoder import adds_eos, append_eos, is_decoder, prepare_tokenizer
from tests.conftest import decoder_tokenizer, make_tiny_bert, make_tiny_decoder

TEXTS = ["gene therapy", "a much longer text about the immune response to a viral vector", "x"]


def test_append_eos_ends_every_text_and_survives_truncation(minilm_path: Path) -> None:
    tok = decoder_tokenizer(minilm_path)
    assert not adds_eos(tok)
    assert append_eos(tok) is True
    assert append_eos(tok) is False  # idempotent
    ids = tok(TEXTS[1], truncation=True, max_length=5)["input_ids"]
    assert len(ids) == 5 and ids[-1] == tok.eos_token_id
    assert all(row[-1] == tok.eos_token_id for row in tok(TEXTS)["input_ids"])


def test_append_eos_keeps_a_leading_bos(minilm_path: Path) -> None:
    tok = decoder_tokenizer(minilm_path, bos=True)
    append_eos(tok)
    ids = tok("gene")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 3


def test_append_eos_needs_an_eos_token(minilm_path: Path) -> None:
    tok = decoder_tokenizer(minilm_path)
    tok.eos_token = None
    with pytest.raises(ValueError, match="eos_token"):
        append_eos(tok)


def test_prepare_drops_token_types_and_sets_padding(minilm_path: Path) -> None:
    tok = decoder_tokenizer(minilm_path)
    prepare_tokenizer(tok, eos=True, padding_side="left")
    batch = tok(TEXTS, padding=True)
    assert "token_type_ids" not in batch
    assert batch["attention_mask"][2][0] == 0  # left padding: the short row starts with pads


def test_is_decoder(minilm_path: Path) -> None:
    vocab = len(decoder_tokenizer(minilm_path))
    assert is_decoder(make_tiny_decoder(vocab, "qwen2").config)
    assert is_decoder(make_tiny_decoder(vocab, "llama").config)
    assert not is_decoder(make_tiny_bert(vocab).config)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_pooling_of_padded_batch_equals_rows_alone(
    minilm_path: Path, family: str, pooling: str, side: str
) -> None:
    tok = decoder_tokenizer(minilm_path)
    prepare_tokenizer(tok, eos=True, padding_side=side)  # type: ignore[arg-type]
    decoder = make_tiny_decoder(len(tok), family, dropout=0.0)
    model = DualEncoder(tok, Encoder(decoder, pooling, mask_positions=True))
    model.eval()
    with torch.no_grad():
        batch = model(model.tokenize(TEXTS))  # (3, H), padded to the longest
        rows = torch.cat([model(model.tokenize([t])) for t in TEXTS])  # each alone: no padding
    torch.testing.assert_close(batch, rows, rtol=1e-4, atol=1e-5)


def test_folder_defaults_for_a_decoder(tiny_decoder_dir: Path) -> None:
    model = load_model(str(tiny_decoder_dir))
    assert model.query_encoder.pooling == "last"
    ids = model.tokenize(["gene therapy"])["input_ids"][0]
    assert int(ids[-1]) == model.tokenizer.eos_token_id
    assert load_model(str(tiny_decoder_dir), pooling="mean").tokenize(["a"])["input_ids"][0][
        -1
    ] != (model.tokenizer.eos_token_id)  # mean pooling: no EOS unless asked
    assert model.query_encoder.transformer.config.use_cache is False


def test_padding_side_override(tiny_decoder_dir: Path) -> None:
    model = load_model(str(tiny_decoder_dir), padding_side="left")
    mask = model.tokenize(TEXTS)["attention_mask"]
    assert mask[2, 0] == 0 and mask[2, -1] == 1
