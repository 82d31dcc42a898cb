"""The real smollm2-135m preset: GGUF -> safetensors cache, fingerprint, a context question answered."""

from __future__ import annotations

import json

import pytest

from ragtune import hub

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm(models_dir):
    if not hub.is_pulled("smollm2-135m", models_dir):
        pytest.skip("smollm2-135m is not pulled (run: ragtune models pull smollm2-135m)")
    from generator import GenConfig, Generator

    return Generator.from_pretrained("smollm2-135m", models_dir=models_dir, config=GenConfig(max_new_tokens=40))


def test_preset_loads_from_its_safetensors_cache(smollm, models_dir):
    from generator.loading import CACHE_MARKER, cache_is_valid, ensure_safetensors_cache, model_fingerprint

    preset = hub.model_dir("smollm2-135m", models_dir)
    sha = json.loads((preset / hub.READY).read_text())["sha256"]
    cache = ensure_safetensors_cache(preset, log=lambda _m: None)  # already there: returns at once
    assert cache == preset / "hf" and cache_is_valid(cache)
    assert json.loads((cache / CACHE_MARKER).read_text())["sha256"] == sha
    assert smollm.fingerprint == sha == model_fingerprint(str(preset / hub.GGUF_NAME)) == model_fingerprint(str(cache))
    assert next(smollm.model.parameters()).dtype in (__import__("torch").bfloat16, __import__("torch").float32)


def test_answers_a_question_from_its_context(smollm):
    messages = [{"role": "system", "content": "Answer the question from the context, briefly."},
                {"role": "user", "content": "Context: The Eiffel Tower in Paris was finished in 1889 and is "
                                            "330 metres tall.\n\nQuestion: When was the Eiffel Tower finished?"}]
    stream = smollm.stream(messages)
    text = "".join(stream)
    assert "1889" in text and stream.generation.finish_reason == "stop"
    assert stream.generation.text == text and stream.generation.first_token_ms > 0
    batch = smollm.generate([messages, [{"role": "user", "content": "What is the capital of France?"}]])
    assert "1889" in batch[0].text and "Paris" in batch[1].text
