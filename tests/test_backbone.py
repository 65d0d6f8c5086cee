"""The backbone loader: every kind of input, its options, its cache and its errors."""

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from jsonargparse import ArgumentParser

from sapo.models import (
    PACKAGED_SMOLLM2,
    TINY_RANDOM,
    BackboneSpec,
    LoraSettings,
    ModelLoadError,
    _model_cache,
    _options,
    load_backbone,
    load_tokenizer,
    packaged_smollm2_gguf,
    resolve_dtype,
)

CHAT = [{"role": "user", "content": "What is 2+3? Answer with a number."}]
ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _prompt_ids(tokenizer) -> torch.Tensor:
    encoded = tokenizer.apply_chat_template(
        CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return encoded["input_ids"]


def _fresh_cache(sapo_cache_dir: str, tmp_path: Path) -> Path:
    """An empty cache except for the session's converted tokenizer, so tiny models build in a second."""
    load_tokenizer(TINY_RANDOM, cache_dir=sapo_cache_dir)
    name = f"tokenizer-{PACKAGED_SMOLLM2}"
    cache = tmp_path / "fresh-cache"
    shutil.copytree(Path(sapo_cache_dir) / name, cache / name)
    return cache


def _trainable_names(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


# ------------------------------------------------------------------------------------- packaged SmolLM2


@pytest.mark.slow
def test_packaged_smollm2_is_converted_once_then_loaded_from_cache(smollm2_first_load, smollm2_cache_dir):
    first = smollm2_first_load.info
    weights = Path(first.checkpoint) / "model.safetensors"
    written_at = weights.stat().st_mtime_ns

    second = (
        BackboneSpec(PACKAGED_SMOLLM2, dtype="bfloat16", cache_dir=smollm2_cache_dir).load_with_info().info
    )

    assert (first.source, first.converted, first.from_cache) == ("packaged", True, False)
    assert (second.source, second.converted, second.from_cache) == ("packaged", False, True)
    assert second.checkpoint == first.checkpoint
    assert weights.stat().st_mtime_ns == written_at
    saved_config = json.loads((Path(first.checkpoint) / "config.json").read_text())
    assert "quantization_config" not in saved_config


@pytest.mark.slow
def test_packaged_smollm2_answers_a_chat_prompt(smollm2_first_load):
    model, tokenizer = smollm2_first_load.model, smollm2_first_load.tokenizer
    prompt = _prompt_ids(tokenizer)
    with torch.no_grad():
        output = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False
        )
    answer = tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)
    assert answer.strip()
    assert "5" in answer


@pytest.mark.slow
def test_converted_checkpoint_gives_the_logits_of_the_gguf_file(smollm2_first_load, smollm2_cache_dir):
    from_gguf = BackboneSpec(str(packaged_smollm2_gguf()), dtype="float32").load_with_info()
    converted, converted_tokenizer = load_backbone(
        PACKAGED_SMOLLM2, dtype="float32", cache_dir=smollm2_cache_dir
    )

    assert from_gguf.info.source == "gguf"
    assert "quantization_config" not in from_gguf.model.config.to_dict()
    prompt = _prompt_ids(from_gguf.tokenizer)
    assert torch.equal(prompt, _prompt_ids(converted_tokenizer))
    with torch.no_grad():
        expected = from_gguf.model(prompt).logits
        actual = converted(prompt).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- tiny model


def test_tiny_random_has_the_real_smollm2_tokenizer(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    assert tokenizer.is_fast
    assert len(tokenizer) == model.config.vocab_size == 49152
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    sentence = "Step 1: 2+3=5."
    encoded = tokenizer(sentence, return_offsets_mapping=True)
    assert "".join(sentence[start:end] for start, end in encoded["offset_mapping"]) == sentence
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "right"  # left padding is the caller's choice, never set here


def test_tiny_random_runs_forward_and_backward(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    batch = tokenizer(["hello there", "a longer second sentence here"], padding=True, return_tensors="pt")
    output = model(**batch, labels=batch["input_ids"])
    output.loss.backward()

    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 64)
    assert output.logits.shape == (2, batch["input_ids"].shape[1], 49152)
    assert torch.isfinite(output.loss)
    assert all(parameter.grad is not None for parameter in model.parameters())


def test_tiny_random_is_seeded_and_leaves_the_global_rng_alone(sapo_cache_dir, tmp_path):
    cached = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=sapo_cache_dir).load()[0].state_dict()
    cache = _fresh_cache(sapo_cache_dir, tmp_path)
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()

    rebuilt = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=str(cache)).load_with_info()
    rng_after = torch.get_rng_state()
    reloaded = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=str(cache)).load_with_info()
    other_seed, _ = load_backbone(TINY_RANDOM, dtype="float32", cache_dir=str(cache), seed=1)

    assert torch.equal(rng_before, rng_after)
    assert rebuilt.info.converted and (reloaded.info.from_cache, reloaded.info.converted) == (True, False)
    assert cached.keys() == rebuilt.model.state_dict().keys()
    assert all(torch.equal(cached[name], value) for name, value in rebuilt.model.state_dict().items())
    assert not torch.equal(
        cached["model.embed_tokens.weight"], other_seed.state_dict()["model.embed_tokens.weight"]
    )


def test_tiny_random_size_is_read_from_the_name(sapo_cache_dir):
    model, _ = load_backbone(f"{TINY_RANDOM}-3x128", dtype="float32", cache_dir=sapo_cache_dir)
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads) == (
        3,
        128,
        8,
    )


# ----------------------------------------------------------------------------------------------- options


def test_auto_dtype_keeps_fully_trained_weights_in_float32():
    fast_bf16 = _options.computes_bfloat16_fast("cpu")
    assert resolve_dtype("auto", "cpu", base_is_frozen=False) == torch.float32
    assert resolve_dtype("auto", "cpu", base_is_frozen=True) == (
        torch.bfloat16 if fast_bf16 else torch.float32
    )
    assert resolve_dtype("bf16", "cpu", base_is_frozen=False) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        BackboneSpec(TINY_RANDOM, dtype="float8")


def test_lora_on_tiny_trains_only_the_adapters(sapo_cache_dir):
    model, tokenizer = load_backbone(TINY_RANDOM, lora=LoraSettings(), cache_dir=sapo_cache_dir)
    trainable = _trainable_names(model)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if name not in trainable}
    batch = tokenizer(["one two three four"], return_tensors="pt")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()

    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} == ALL_LINEAR
    assert model.get_base_model().model.embed_tokens.weight.dtype == resolve_dtype("auto", "cpu", True)
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for name, p in model.named_parameters()
        if "lora_B" in name
    )


def test_four_bit_lora_still_trains_after_generation(sapo_cache_dir):
    """Regression test for the bitsandbytes CPU inference layout, which broke backward after generate()."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model, tokenizer = load_backbone(
        TINY_RANDOM, load_in_4bit=True, lora=LoraSettings(dropout=0.0), cache_dir=sapo_cache_dir
    )
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)  # non-zero B so every adapter receives a gradient
    batch = tokenizer(["the first layer must get its gradient"], return_tensors="pt")
    first_adapter = next(
        p for name, p in model.named_parameters() if "layers.0.self_attn.q_proj.lora_A" in name
    )

    def first_layer_gradient() -> torch.Tensor:
        model.train()
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return first_adapter.grad.detach().clone()

    before = first_layer_gradient()
    model.eval()
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=3, do_sample=False)
    after = first_layer_gradient()

    assert any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())
    assert all("lora_" in name for name in _trainable_names(model))
    assert before.abs().sum() > 0
    torch.testing.assert_close(after, before)  # the training layout is restored exactly


def test_gradient_checkpointing_gives_the_same_gradients(sapo_cache_dir):
    def lora_gradients(checkpointing: bool) -> tuple[object, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model, tokenizer = load_backbone(
            TINY_RANDOM,
            dtype="float32",
            lora=LoraSettings(dropout=0.0),
            gradient_checkpointing=checkpointing,
            cache_dir=sapo_cache_dir,
        )
        batch = tokenizer(["checkpointing must not change gradients"], return_tensors="pt")
        model.train()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return model, {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    checkpointed, with_checkpointing = lora_gradients(True)
    _, without = lora_gradients(False)

    # the flag's name before transformers 5.2x: is_gradient_checkpointing
    base = checkpointed.get_base_model()
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    assert checkpointed.config.use_cache is False
    assert with_checkpointing.keys() == without.keys()
    for name, gradient in without.items():
        torch.testing.assert_close(with_checkpointing[name], gradient)


def test_backbone_spec_is_filled_by_jsonargparse():
    parser = ArgumentParser()
    parser.add_class_arguments(BackboneSpec, "backbone")
    config = parser.parse_string(
        "backbone:\n  name_or_path: tiny-random\n  dtype: bfloat16\n"
        "  lora:\n    r: 8\n    target_modules: [q_proj, v_proj]\n"
    )
    spec = parser.instantiate(config).backbone

    assert isinstance(spec, BackboneSpec) and isinstance(spec.lora, LoraSettings)
    assert (spec.name_or_path, spec.dtype, spec.lora.r, spec.lora.alpha) == ("tiny-random", "bfloat16", 8, 32)
    assert spec.lora.target_modules == ["q_proj", "v_proj"]


# ------------------------------------------------------------------------------------- errors and cache


def test_unknown_name_lists_every_way_that_was_tried(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        load_backbone("nobody/no-such-model", cache_dir=str(tmp_path))
    message = str(caught.value)
    assert "'nobody/no-such-model'" in message
    assert f"not a known name (known: {PACKAGED_SMOLLM2}, {TINY_RANDOM}" in message
    assert "not a .gguf file" in message
    assert f"no local folder at {tmp_path / 'nobody' / 'no-such-model'}" in message
    assert "hub: 'nobody/no-such-model' was taken for a hub model id, but offline mode is set" in message


def test_missing_gguf_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelLoadError, match="no GGUF file at") as caught:
        load_backbone(str(missing))
    assert str(missing) in str(caught.value)
    assert "hub" not in str(caught.value)
    with pytest.raises(ModelLoadError, match="load_in_4bit needs a checkpoint folder"):
        load_backbone(str(packaged_smollm2_gguf()), load_in_4bit=True)


def test_corrupt_local_folder_is_reported(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)

    with pytest.raises(ModelLoadError) as caught:
        load_backbone(str(folder))
    assert f"could not load model '{folder}'" in str(caught.value)
    assert f"local {folder}:" in str(caught.value)


def test_local_folder_loads_the_same_weights_and_gets_a_pad_token(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    tokenizer.pad_token = None
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    loaded = BackboneSpec(str(tmp_path), dtype="float32").load_with_info()

    assert loaded.info.source == "local"
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token is not None
    prompt = _prompt_ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(prompt).logits, model(prompt).logits)


def test_truncated_cache_is_rebuilt(sapo_cache_dir, tmp_path):
    cache = str(_fresh_cache(sapo_cache_dir, tmp_path))
    first = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=cache).load_with_info()
    expected = {name: value.clone() for name, value in first.model.state_dict().items()}
    del first  # its weights are memory-mapped from the file truncated below
    weights = Path(cache) / f"{TINY_RANDOM}-2x64-seed0" / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(1000)

    second = BackboneSpec(TINY_RANDOM, dtype="float32", cache_dir=cache).load_with_info()

    assert second.info.converted and not second.info.from_cache
    assert all(torch.equal(expected[name], value) for name, value in second.model.state_dict().items())


def test_interrupted_conversion_leaves_no_folder_behind(tmp_path):
    def interrupted_build(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _model_cache._write_cache_entry(tmp_path / "entry", {"kind": "test"}, interrupted_build)
    assert list(tmp_path.iterdir()) == []

    unfinished = tmp_path / "entry"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"no manifest: a foreign or unfinished folder")
    folder, built_now = _model_cache._ensure_cache_entry(
        unfinished, {"kind": "test"}, lambda folder: (folder / "weights.bin").write_bytes(b"ok")
    )
    assert built_now and sorted(p.name for p in folder.iterdir()) == ["sapo-cache.json", "weights.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_tokenizer_alone_does_not_convert_the_model(tmp_path, sapo_cache_dir):
    cache = _fresh_cache(sapo_cache_dir, tmp_path)
    tokenizer = load_tokenizer(PACKAGED_SMOLLM2, cache_dir=str(cache))
    assert tokenizer.is_fast and tokenizer.chat_template
    assert not (cache / PACKAGED_SMOLLM2).exists()
    with pytest.raises(ModelLoadError, match="missing.gguf"):
        load_tokenizer(str(tmp_path / "missing.gguf"))


def test_a_tokenizer_read_before_is_copied_and_one_whose_files_changed_is_read_again(
    sapo_cache_dir, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    source = Path(load_tokenizer(PACKAGED_SMOLLM2, cache_dir=sapo_cache_dir).name_or_path)
    first, second = tmp_path / "sft", tmp_path / "iteration_1"  # the same tokenizer saved by two phases
    for folder in (first, second):
        shutil.copytree(source, folder)
        (folder / "chat_template.jinja").write_text(f"{tmp_path}: " + "{{ messages[0]['content'] }}")
    reads = []
    real = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: reads.append(a) or real(*a, **k))

    a, b = load_tokenizer(str(first)), load_tokenizer(str(second))
    assert len(reads) == 1  # the second folder's files are the first's: not read again
    assert (a.name_or_path, b.name_or_path) == (str(first), str(second))
    assert a is not b and a("12 + 3 = 15")["input_ids"] == b("12 + 3 = 15")["input_ids"]
    side = b.padding_side
    a.padding_side, a.pad_token = "left" if side == "right" else "right", "<|im_start|>"
    again = load_tokenizer(str(first))  # what a caller changes stays its own
    assert b.padding_side == again.padding_side == side and b.pad_token == again.pad_token != "<|im_start|>"

    (second / "chat_template.jinja").write_text("{{ messages[0]['content'] }}!")  # not read before
    changed = load_tokenizer(str(second))
    assert (
        len(reads) == 2
        and changed.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi!"
    )
