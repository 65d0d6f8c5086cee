"""sapo's grouped eager attention: eager's values with the key/value heads read in place; which attention
``generate`` decodes with; the model set back afterwards; the same samples as under eager."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from sapo.evolution.settings import SamplingSettings
from sapo.models import TINY_RANDOM, BackboneSpec
from sapo.rollout import generate_batched
from sapo.rollout.attention import (
    GROUPED_EAGER,
    attention_implementation,
    grouped_eager_attention,
    resolve_decode_attention,
)

PROMPTS = ["Question: what is 2 + 3?\nAnswer:\n", "Question: 7 - 1?\nAnswer:\n", "Hi"]


@pytest.fixture(scope="module")
def tiny(sapo_cache_dir):
    model, tokenizer = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir).load()
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped-query attention
    return model.eval(), tokenizer


def _repeated_keys_attention(query, key, value, mask, scaling):
    """Eager attention as transformers writes it: every key/value head copied once per query head."""
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    weights = (query @ key.transpose(2, 3)) * scaling + mask[..., : key.shape[2]]
    return (weights.softmax(-1) @ value).transpose(1, 2)


@pytest.mark.parametrize("length", [1, 5])
def test_grouped_eager_attention_equals_attention_with_copied_keys(length):
    torch.manual_seed(0)
    batch, query_heads, kv_heads, keys, dim = 2, 6, 2, 7, 4
    query = torch.randn(batch, query_heads, length, dim)
    key, value = torch.randn(batch, kv_heads, keys, dim), torch.randn(batch, kv_heads, keys, dim)
    mask = torch.zeros(batch, 1, length, keys + 3)  # wider than the keys, as a mask may be
    mask[0, ..., :2] = torch.finfo(torch.float32).min  # row 0's first two keys are padding
    layer = torch.nn.Module().eval()
    output, weights = grouped_eager_attention(layer, query, key, value, mask, scaling=0.5)
    assert weights is None and output.shape == (batch, length, query_heads, dim)
    expected = _repeated_keys_attention(query, key, value, mask, 0.5)
    torch.testing.assert_close(output, expected, rtol=1e-6, atol=1e-6)
    # the padded keys take no part: changing them changes nothing
    key[0, :, :2], value[0, :, :2] = 100.0, -100.0
    again, _ = grouped_eager_attention(layer, query, key, value, mask, scaling=0.5)
    torch.testing.assert_close(again[0], output[0])


def test_grouped_eager_attention_refuses_what_it_does_not_apply():
    tensors = torch.zeros(1, 2, 1, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)
    with pytest.raises(ValueError, match="softcap"):
        grouped_eager_attention(torch.nn.Module(), *tensors, None, scaling=1.0, softcap=30.0)


def test_a_model_under_grouped_eager_gives_eagers_logits_and_is_set_back(tiny):
    model, tokenizer = tiny
    ids = torch.randint(5, 1000, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        with attention_implementation(model, "eager"):
            eager = model(input_ids=ids, attention_mask=mask).logits
        with attention_implementation(model, GROUPED_EAGER):
            assert model.config._attn_implementation == GROUPED_EAGER
            grouped = model(input_ids=ids, attention_mask=mask).logits
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(grouped[mask.bool()], eager[mask.bool()], rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="inside"), attention_implementation(model, GROUPED_EAGER):
        raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"  # set back after an error too


def test_which_attention_decodes(tiny):
    model, _ = tiny
    assert resolve_decode_attention(model, "auto") == GROUPED_EAGER  # a Llama on a CPU
    assert resolve_decode_attention(model, "model") is None
    assert resolve_decode_attention(model, "eager") == "eager"
    other = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa", model_type="gemma2"))
    other.device = torch.device("cpu")
    assert resolve_decode_attention(other, "auto") is None  # soft-capped attention: the model's own
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        resolve_decode_attention(model, "flash")


def test_generate_decodes_under_grouped_eager_as_under_eager(tiny):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=6, batch_size=4)
    sampled = dict(temperature=1.0, seed=3, **kwargs)
    for settings in (kwargs, sampled):
        grouped = generate_batched(model, tokenizer, PROMPTS * 2, decode_attention="auto", **settings)
        eager = generate_batched(model, tokenizer, PROMPTS * 2, decode_attention="eager", **settings)
        assert grouped == eager
        assert model.config._attn_implementation == "sdpa"
    assert len({g.text for g in grouped}) > 1


def test_a_backbone_loads_with_the_attention_it_names(sapo_cache_dir):
    spec = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir)
    model, _ = replace(spec, attention=GROUPED_EAGER).load()
    assert model.config._attn_implementation == GROUPED_EAGER
    assert spec.load()[0].config._attn_implementation == "sdpa"
    with pytest.raises(
        ValueError, match="attention must be null or one of .*'sapo_grouped_eager'.*got 'fast'"
    ):
        replace(spec, attention="fast")


def test_the_loop_names_a_bad_decode_attention():
    with pytest.raises(ValueError, match=r"model\.init_args\.sampling\.decode_attention must be one of"):
        SamplingSettings(decode_attention="flash")
