"""Generator: loading, batched/streamed generation, stopping, adapters, the answer pipeline.

A tiny random Llama (2 layers, hidden 64) with the REAL SmolLM2 tokenizer (so the chat
template and end-of-turn tokens are real) is built once per session; fp32 so that
batched and sequential greedy decoding agree exactly.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from generator import GenConfig, Generation, Generator, load_generator, model_fingerprint  # noqa: E402
from generator.adapters import META_NAME, STATE_DICT_FILE  # noqa: E402
from ragtune import hub  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Answer from the sources."},
     {"role": "user", "content": "Sources:\n[1] The Eiffel Tower was finished in 1889 and is 330 metres tall.\n\n"
                                 "Question: When was the Eiffel Tower finished?"}],
    [{"role": "user", "content": "Name three rivers in Europe, and say which is the longest of them."}],
    [{"role": "user", "content": "What is two plus two?"}],
]


def _smollm_tokenizer(models_dir: Path):
    from transformers import AutoTokenizer

    preset = models_dir / "smollm2-135m"
    if not hub.is_pulled("smollm2-135m", models_dir):
        pytest.skip("smollm2-135m is not pulled (run: ragtune models pull smollm2-135m)")
    if (preset / "hf" / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(preset / "hf"))
    return AutoTokenizer.from_pretrained(str(preset), gguf_file=hub.GGUF_NAME)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, models_dir) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm_tokenizer(models_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         initializer_range=0.2)  # large random weights: varied text, no near-ties
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_dir) -> Generator:
    model, tokenizer = load_generator(str(tiny_dir), dtype="fp32", device="cpu")
    return Generator(model, tokenizer, GenConfig(max_new_tokens=12, batch_size=3))


@pytest.fixture()
def gen(tiny):
    """The shared tiny generator, with no adapter selected and any hooks removed after the test, and no
    prompt KV kept from an earlier test (LogitBias tells a prefill by its many input positions)."""
    tiny.forget_prefixes()
    yield tiny
    tiny.set_adapter(None)


class LogitBias:
    """Forward hooks: add `value` to `token_id`'s logit from decoding step `after` on.

    Step 0 is the token predicted from a prompt (a prefill: more than one input position,
    whether prompts are prefilled one by one or as a batch); each single-position forward
    (one batched decode step) is the next step.
    """

    def __init__(self, model, token_ids: list[int], value: float, after: int = 0) -> None:
        self.token_ids, self.value, self.after, self.decodes, self.prefill = token_ids, value, after, 0, True
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else model.lm_head
        self.handles = [model.get_input_embeddings().register_forward_pre_hook(self.on_input),
                        head.register_forward_hook(self)]

    def on_input(self, module, inputs):
        self.prefill = inputs[0].shape[-1] > 1

    def __call__(self, module, inputs, output):
        if not self.prefill:
            self.decodes += 1
        step = 0 if self.prefill else self.decodes
        if step >= self.after:
            output[..., self.token_ids] += self.value
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------------- config / loading
def test_genconfig_validates():
    for bad in ({"max_new_tokens": 0}, {"max_new_tokens": 5000}, {"temperature": 0}, {"top_p": 1.5},
                {"batch_size": 0}, {"top_k": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GenConfig(**bad)
    with pytest.raises(ValueError, match="unknown generation option"):
        GenConfig().replace(max_tokens=3)
    assert GenConfig().replace(max_new_tokens=7, do_sample=None).max_new_tokens == 7


def test_missing_preset_says_how_to_pull(tmp_path):
    with pytest.raises(hub.ModelNotFound, match="ragtune models pull qwen2.5-0.5b"):
        load_generator("qwen2.5-0.5b", models_dir=tmp_path)
    with pytest.raises(hub.ModelNotFound, match="neither a local path nor a preset"):
        model_fingerprint("no-such-model", models_dir=tmp_path)


def test_fingerprint_of_a_folder_tracks_config_and_weights(tiny_dir, tiny, tmp_path):
    fp = model_fingerprint(str(tiny_dir))
    assert tiny.fingerprint == fp and len(fp) == 64
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((tiny_dir / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (other / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(str(other)) != fp


# ------------------------------------------------------------------------------- generation
def test_left_padding_and_mask(gen):
    ids, mask = gen._batch_tensors([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [gen.pad_id, gen.pad_id, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_end_of_turn_ids_include_eos_and_im_end(gen):
    vocab = gen.tokenizer.get_vocab()
    assert vocab["<|im_end|>"] in gen.stop_ids and gen.tokenizer.eos_token_id in gen.stop_ids
    assert vocab["<|endoftext|>"] in gen.stop_ids


def test_prompt_uses_the_chat_template(gen):
    text = gen.render(PROMPTS[0])
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in text
    with pytest.raises(ValueError, match="messages"):
        gen.render([{"content": "no role"}])


def test_batched_equals_sequential_greedy(gen):
    batched = gen.generate(PROMPTS, batch_size=4, max_padding=1.0)  # one left-padded batch
    sequential = [gen.generate([p], batch_size=1)[0] for p in PROMPTS]
    assert [b.text for b in batched] == [s.text for s in sequential]
    assert [b.prompt_tokens for b in batched] == [len(gen.encode(p)) for p in PROMPTS]
    assert len({b.prompt_tokens for b in batched}) == len(PROMPTS)  # lengths differ: padding was exercised
    assert all(b.new_tokens > 0 and b.generate_ms > 0 and 0 < b.first_token_ms <= b.generate_ms for b in batched)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_split_prefill_batch_matches_transformers_generate(gen, penalty):
    """Prompts prefilled one by one, then decoded as one batch (rows leaving as they stop),
    give what plain `model.generate` gives for each prompt alone."""
    batched = gen.generate(PROMPTS, batch_size=4, max_new_tokens=12, repetition_penalty=penalty)
    with torch.inference_mode():
        for p, b in zip(PROMPTS, batched):
            ids = torch.tensor([gen.encode(p)])
            ref = gen.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                     do_sample=False, repetition_penalty=penalty, eos_token_id=gen.stop_ids,
                                     pad_token_id=gen.pad_id)
            new, reason = gen._finish(ref[0, ids.shape[1]:].tolist())
            assert (b.text, b.new_tokens, b.finish_reason) == (
                gen.tokenizer.decode(new, skip_special_tokens=True), len(new), reason)


def test_prompts_sharing_a_prefix_reuse_its_kv_and_answer_as_alone(gen):
    """Prompts starting alike (same system message) prefill only what follows the shared tokens;
    answers and log-probabilities equal plain `model.generate` / teacher forcing on each prompt alone."""
    from generator.batch import MIN_SHARED_PREFIX, DecodeBatch

    system = {"role": "system", "content": "Answer the question with the shortest span copied from the source. "
                                           "Reply with the answer only, no sentence, no explanation."}
    prompts = [[system, {"role": "user", "content": q}] for q in
               ("Sources:\n[1] The Eiffel Tower was finished in 1889.\n\nQuestion: When?", "What is two plus two?",
                "Name a river in Europe.")]
    encoded = [gen.encode(p) for p in prompts]
    batch = DecodeBatch(gen.model, gen.stop_ids, gen.config.replace(max_new_tokens=8), gen.pad_id)
    done = {}
    with torch.inference_mode():
        for i, ids in enumerate(encoded):
            batch.add(ids, tag=i)
        while len(batch):
            for fin in batch.step():
                done[fin.tag] = fin
    shared = [len(os.path.commonprefix([encoded[i - 1], encoded[i]])) for i in (1, 2)]
    assert min(shared) >= MIN_SHARED_PREFIX and batch.reused_tokens == sum(shared)
    with torch.inference_mode():
        for i, (p, ids) in enumerate(zip(prompts, encoded)):
            want = _generated_ids(gen, p, 8)
            assert done[i].ids == [t for t in want if t not in gen.stop_ids]
            logp = torch.log_softmax(gen.model(input_ids=torch.tensor([ids + want])).logits[0].float(), -1)
            expected = sum(float(logp[j - 1, (ids + want)[j]]) for j in range(len(ids), len(ids) + len(want)))
            assert done[i].logprob == pytest.approx(expected, abs=1e-3)


def test_prefix_store_lasts_across_calls_per_adapter(tiny_dir, adapter_dirs):
    """The Generator keeps prompt KV across generate calls for the same adapter (a question asked
    again, or its next source, prefills only what is new) and never reuses it under another adapter."""
    g = Generator(*load_generator(str(tiny_dir), dtype="fp32", device="cpu"), GenConfig(max_new_tokens=6))
    first = g.generate(PROMPTS[1:2])[0]
    store = g._prefix_store(None)
    assert len(store.entries) == 1
    again = g.generate(PROMPTS[1:2])[0]
    assert (again.text, again.logprob) == (first.text, pytest.approx(first.logprob, abs=1e-4))
    assert g._prefix_store(None) is store and len(store.entries) == 2
    fresh = Generator(*load_generator(str(tiny_dir), dtype="fp32", device="cpu"), GenConfig(max_new_tokens=6))
    for name in ("lora", "sd"):  # a peft adapter and a state-dict one (weights swapped in place)
        g.load_adapter(name, adapter_dirs[name])
        fresh.load_adapter(name, adapter_dirs[name])
        for _ in range(2):  # asked twice: the second time from the adapter's own stored KV
            tuned = g.generate(PROMPTS[1:2], adapter=name)[0]
            assert g._prefix_store(name) is not store
            assert tuned.logprob == pytest.approx(fresh.generate(PROMPTS[1:2], adapter=name)[0].logprob, abs=1e-4)
        assert g.generate(PROMPTS[1:2])[0].logprob == pytest.approx(first.logprob, abs=1e-4)  # base again


def test_logprob_is_the_answers_log_likelihood(gen):
    """Generation.logprob (batched decoding) = the teacher-forced log-likelihood of answer + stop token."""
    batched = gen.generate(PROMPTS, batch_size=4, max_new_tokens=12)
    with torch.inference_mode():
        for p, b in zip(PROMPTS, batched):
            prompt = gen.encode(p)
            ids = prompt + _generated_ids(gen, p, 12)
            logp = torch.log_softmax(gen.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            expected = sum(float(logp[i - 1, ids[i]]) for i in range(len(prompt), len(ids)))
            assert b.logprob == pytest.approx(expected, abs=1e-3)
            assert b.logprob < 0


def test_prompt_logprob_scores_a_span_of_the_prompt_in_the_same_prefill(gen):
    """generate(score=...) returns the mean log p of that prompt text given what precedes it, equal to a
    plain forward pass, also when the same prompts' KV is stored (the span is prefilled again), and
    changes neither the answers nor their log-probabilities."""
    system = {"role": "system", "content": "Answer the question with the shortest span copied from the source. "
                                           "Reply with the answer only."}
    questions = ["When was the tower finished?", "Who built the tower?"]
    prompts = [[system, {"role": "user", "content": f"Sources:\n[1] {src}\n\nQuestion: {q}\n\nShortest span:"}]
               for q in questions for src in ("The Eiffel Tower was finished in 1889.", "Rivers flow to the sea.")]
    texts = [q for q in questions for _ in range(2)]
    plain = gen.generate(prompts, max_new_tokens=6)
    for attempt in range(2):  # the second time every prompt's KV is in the prefix store
        scored = gen.generate(prompts, max_new_tokens=6, score=texts)
        for p, text, g, ref in zip(prompts, texts, scored, plain):
            ids, (start, end) = gen.encode_scored(p, text)
            assert ids == gen.encode(p) and text in gen.tokenizer.decode(ids[start:end])
            with torch.inference_mode():
                logp = torch.log_softmax(gen.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            want = sum(float(logp[j - 1, ids[j]]) for j in range(start, end)) / (end - start)
            assert g.prompt_logprob == pytest.approx(want, abs=1e-4) and g.prompt_logprob < 0
            assert (g.text, g.logprob) == (ref.text, pytest.approx(ref.logprob, abs=1e-4))
    assert all(g.prompt_logprob is None for g in plain)
    assert gen.encode_scored(prompts[0], "not in the prompt")[1] is None
    assert gen.generate(prompts[:1], max_new_tokens=2, score=[None])[0].prompt_logprob is None
    with pytest.raises(ValueError, match="score has 1 entries for 2 prompts"):
        gen.generate(prompts[:2], score=["x"])
    from generator.batch import DecodeBatch

    with pytest.raises(ValueError, match="not inside the prompt"), torch.inference_mode():
        DecodeBatch(gen.model, gen.stop_ids, gen.config, gen.pad_id).add([1, 2, 3], score=(0, 2))


def test_ban_first_asks_for_the_next_best_answer_with_its_true_logprob(gen):
    """ban_first: the answer starts with the best token not banned; its logprob is the teacher-forced
    log-likelihood under the model's unrestricted distribution; first_token_id reports what was chosen."""
    plain = gen.generate(PROMPTS, max_new_tokens=6)
    bans = [[g.first_token_id] for g in plain]
    again = gen.generate(PROMPTS, max_new_tokens=6, ban_first=bans)
    with torch.inference_mode():
        for p, g, a, ban in zip(PROMPTS, plain, again, bans):
            ids = gen.encode(p)
            logits = gen.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            assert g.first_token_id == int(logits.argmax())
            logits[ban] = float("-inf")
            assert a.first_token_id == int(logits.argmax()) != g.first_token_id
            head = torch.tensor([ids + [a.first_token_id]])  # then greedy, as plain model.generate goes on
            out = gen.model.generate(input_ids=head, attention_mask=torch.ones_like(head), max_new_tokens=5,
                                     do_sample=False, eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id)
            full = out[0].tolist()
            stop = next((j for j in range(len(ids), len(full)) if full[j] in gen.stop_ids), len(full) - 1)
            full = full[:stop + 1]
            logp = torch.log_softmax(gen.model(input_ids=torch.tensor([full])).logits[0].float(), -1)
            want = sum(float(logp[j - 1, full[j]]) for j in range(len(ids), len(full)))
            assert a.logprob == pytest.approx(want, abs=1e-3)
    with pytest.raises(ValueError, match="ban_first has 1 entries"):
        gen.generate(PROMPTS[:2], ban_first=[[1]])


def _generated_ids(gen, messages, max_new):
    """Plain model.generate's new ids for one prompt, cut after the first stop token (kept)."""
    ids = torch.tensor([gen.encode(messages)])
    out = gen.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                             do_sample=False, eos_token_id=gen.stop_ids, pad_token_id=gen.pad_id)
    new = out[0, ids.shape[1]:].tolist()
    for i, t in enumerate(new):
        if t in gen.stop_ids:
            return new[:i + 1]
    return new


def test_rows_leave_the_batch_when_they_stop(gen):
    """One row stops early; the others continue in a smaller batch and still match plain generate."""
    im_end = gen.tokenizer.convert_tokens_to_ids("<|im_end|>")
    state = {"decodes": 0}

    def bias_first_row(module, inputs, output):
        if output.shape[0] == len(PROMPTS) and inputs[0].shape[1] == 1:  # a decode step of the full batch
            state["decodes"] += 1
            if state["decodes"] >= 2:
                output[0, :, im_end] += 1e4
        return output

    handle = gen.model.get_output_embeddings().register_forward_hook(bias_first_row)
    try:
        out = gen.generate(PROMPTS, batch_size=4, max_new_tokens=10)
    finally:
        handle.remove()
    longest = max(range(len(PROMPTS)), key=lambda i: len(gen.encode(PROMPTS[i])))  # row 0 of the batch
    assert (out[longest].new_tokens, out[longest].finish_reason) == (2, "stop")
    for i, p in enumerate(PROMPTS):
        if i != longest:
            assert out[i].text == gen.generate([p], max_new_tokens=10)[0].text


def test_rows_join_a_running_batch(gen):
    """batch_size 2 for 4 prompts: later prompts join as rows stop; answers are unchanged."""
    expected = [gen.generate([p], max_new_tokens=10)[0].text for p in PROMPTS]
    assert [g.text for g in gen.generate(PROMPTS, batch_size=2, max_new_tokens=10)] == expected


def test_serve_admits_longer_prompts_between_steps(gen):
    """The server loop: prompts arrive one per step, shortest first (each join widens the cache)."""
    by_length = sorted(range(len(PROMPTS)), key=lambda i: len(gen.encode(PROMPTS[i])))
    waiting = [(PROMPTS[i], 6 + i, i) for i in by_length]
    got, calls = {}, []

    def take(free, idle):
        calls.append((free, idle))
        return [waiting.pop(0)] if waiting and free else []

    gen.serve(take, lambda tag, g: got.setdefault(tag, g))
    assert sorted(got) == list(range(len(PROMPTS)))
    for i, p in enumerate(PROMPTS):
        ref = gen.generate([p], max_new_tokens=6 + i)[0]
        assert (got[i].text, got[i].new_tokens, got[i].finish_reason) == (ref.text, ref.new_tokens, ref.finish_reason)
    assert calls[-1][1]  # it ended when idle and nothing was left


def test_serve_reports_a_bad_prompt_and_goes_on(gen):
    waiting = [([{"role": "user"}], 5, "bad"), (PROMPTS[0], 5, "good")]
    got = {}
    gen.serve(lambda free, idle: [waiting.pop(0)] if waiting else [], lambda tag, g: got.setdefault(tag, g))
    assert isinstance(got["bad"], ValueError) and got["good"].text == gen.generate([PROMPTS[0]], max_new_tokens=5)[0].text


def test_vocabulary_head_gets_canonical_strides(tiny_dir):
    """The head's input is a fresh-strided tensor even when the prompt is sliced to its last
    position (a strided view of a frozen bf16 head was 36x slower on torch 2.13 CPU)."""
    model, tokenizer = load_generator(str(tiny_dir), dtype="fp32", device="cpu")
    model.requires_grad_(False)
    g = Generator(model, tokenizer, GenConfig(max_new_tokens=3))
    seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda m, a: seen.append((tuple(a[0].shape), a[0].stride())))
    try:
        g.generate(PROMPTS[:2])
    finally:
        handle.remove()
    assert seen and any(shape[1] == 1 for shape, _ in seen)
    for shape, stride in seen:
        assert stride[0] == shape[1] * shape[2], (shape, stride)


def test_sliding_window_models_use_model_generate(tiny_dir):
    """A sliding-window cache cannot be merged row by row: generate falls back to model.generate
    (same greedy answers), serve refuses before taking any request (the API then uses generate)."""
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    from generator.batch import Unsupported, supports

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=16, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                                             initializer_range=0.2)).eval()
    g = Generator(model, tokenizer, GenConfig(max_new_tokens=6))
    assert not supports(model)
    assert supports(load_generator(str(tiny_dir), dtype="fp32")[0])  # the plain Llama cache
    got = g.generate(PROMPTS[:2])
    with torch.inference_mode():
        for p, out in zip(PROMPTS[:2], got):
            ids = torch.tensor([g.encode(p)])
            ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 eos_token_id=g.stop_ids, pad_token_id=g.pad_id)
            assert out.text == tokenizer.decode(g._finish(ref[0, ids.shape[1]:].tolist())[0], skip_special_tokens=True)
    taken = []
    with pytest.raises(Unsupported):
        g.serve(lambda free, idle: taken.append(1) or [], lambda tag, x: None)
    assert not taken


def test_stops_at_end_of_turn(gen):
    im_end = gen.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with LogitBias(gen.model, [im_end], 1e4, after=4):
        out = gen.generate(PROMPTS[:2], max_new_tokens=20, max_padding=1.0)  # one batch: one step counter
    for g in out:
        assert g.finish_reason == "stop" and g.new_tokens == 4
        assert "<|im_end|>" not in g.text


def test_max_new_tokens_bounds_the_answer(gen):
    with LogitBias(gen.model, gen.stop_ids, -1e4):  # never stop on its own
        out = gen.generate(PROMPTS[:2], max_new_tokens=5)
    assert [(g.new_tokens, g.finish_reason) for g in out] == [(5, "length"), (5, "length")]
    with pytest.raises(ValueError, match="max_new_tokens"):
        gen.generate(PROMPTS[:1], max_new_tokens=4096)


def test_sampling_is_seeded(gen):
    a = gen.generate(PROMPTS[:1], do_sample=True, temperature=1.5, seed=7)[0].text
    b = gen.generate(PROMPTS[:1], do_sample=True, temperature=1.5, seed=7)[0].text
    assert a == b


def test_stream_yields_the_same_text_as_generate(gen):
    expected = gen.generate([PROMPTS[1]])[0]
    stream = gen.stream(PROMPTS[1])
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == expected.text
    assert stream.generation.text == expected.text and stream.generation.new_tokens == expected.new_tokens
    assert 0 < stream.generation.first_token_ms < stream.generation.generate_ms
    assert gen.last_generation is stream.generation


def test_stream_closed_early_releases_the_generator(gen):
    with LogitBias(gen.model, gen.stop_ids, -1e4):
        stream = gen.stream(PROMPTS[0], max_new_tokens=200)
        next(stream)
        stream.close()
    assert gen.generate([PROMPTS[0]], max_new_tokens=2)[0].new_tokens == 2  # the lock was released


# ------------------------------------------------------------------------------- adapters
def _write_meta(path: Path, kind: str, fingerprint: str) -> None:
    (path / META_NAME).write_text(json.dumps({"name": path.name, "method": "test", "kind": kind,
                                              "base_model": "tiny", "base_fingerprint": fingerprint}))


@pytest.fixture(scope="session")
def adapter_dirs(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    fp = model_fingerprint(str(tiny_dir))
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    out = {"lora": root / "lora", "sd": root / "sd", "alien": root / "alien"}
    lora.save_pretrained(out["lora"])
    _write_meta(out["lora"], "peft", fp)
    base = lora.unload()
    for name, fingerprint in (("sd", fp), ("alien", "0" * 64)):
        out[name].mkdir()
        w = base.model.layers[1].mlp.down_proj.weight
        save_file({"model.layers.1.mlp.down_proj.weight": torch.randn_like(w) * 0.5}, out[name] / STATE_DICT_FILE)
        _write_meta(out[name], "state_dict", fingerprint)
    return out


def test_adapters_switch_per_request_without_reloading(tiny_dir, adapter_dirs):
    model, tokenizer = load_generator(str(tiny_dir), dtype="fp32", device="cpu")
    g = Generator(model, tokenizer, GenConfig(max_new_tokens=10))
    weight = model.model.layers[1].mlp.down_proj.weight
    original = weight.detach().clone()
    base = [x.text for x in g.generate(PROMPTS[:2])]
    g.load_adapter("sd", adapter_dirs["sd"])
    g.load_adapter("lora", adapter_dirs["lora"])
    assert g.adapters() == ["lora", "sd"]
    assert [x.text for x in g.generate(PROMPTS[:2])] == base  # loading does not activate
    lora = [x.text for x in g.generate(PROMPTS[:2], adapter="lora")]
    sd = [x.text for x in g.generate(PROMPTS[:2], adapter="sd")]
    assert lora != base and sd != base and lora != sd
    g.set_adapter("lora")
    assert [x.text for x in g.generate(PROMPTS[:2])] == lora and g.last_generation.adapter == "lora"
    assert [x.text for x in g.generate(PROMPTS[:2], adapter=None)] == base
    assert [x.text for x in g.generate(PROMPTS[:2], adapter="sd")] == sd
    assert "".join(g.stream(PROMPTS[1], adapter="sd")) == sd[1]
    g.set_adapter(None)
    assert [x.text for x in g.generate(PROMPTS[:2])] == base
    assert torch.equal(weight, original)  # the state_dict adapter's swap was undone
    with pytest.raises(ValueError, match="not loaded"):
        g.set_adapter("nope")
    with pytest.raises(ValueError, match="already loaded"):
        g.load_adapter("lora", adapter_dirs["lora"])


def test_concurrent_callers_do_not_interleave_adapters(tiny_dir, adapter_dirs):
    model, tokenizer = load_generator(str(tiny_dir), dtype="fp32", device="cpu")
    g = Generator(model, tokenizer, GenConfig(max_new_tokens=6))
    g.load_adapter("sd", adapter_dirs["sd"])
    expected = {a: g.generate(PROMPTS[1:2], adapter=a)[0].text for a in (None, "sd")}
    got: list[tuple] = []

    def worker(adapter):
        for _ in range(3):
            got.append((adapter, g.generate(PROMPTS[1:2], adapter=adapter)[0].text))

    threads = [threading.Thread(target=worker, args=(a,)) for a in (None, "sd", None, "sd")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 12 and all(text == expected[a] for a, text in got)


def _next_token_logits(model, tokenizer, messages) -> "torch.Tensor":
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].float()


def _rel_err(a: "torch.Tensor", b: "torch.Tensor") -> float:
    """Relative RMS difference of two logit tables."""
    return float((a - b).norm() / (a - a.mean()).norm())


def test_int8_quantises_every_linear_and_stays_close_to_fp32(tiny_dir):
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    fp32, tokenizer = load_generator(str(tiny_dir), dtype="fp32", device="cpu")
    int8, _ = load_generator(str(tiny_dir), dtype="int8", device="cpu")
    floats = [n for n, m in int8.named_modules() if type(m) is torch.nn.Linear]
    assert floats == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]  # INT8_KEEP_FLOAT
    assert isinstance(int8.lm_head, QLinear) and isinstance(int8.model.layers[0].mlp.up_proj, QLinear)
    assert int8.ragtune_fingerprint == fp32.ragtune_fingerprint  # fp32 adapters still match this base
    a, b = (_next_token_logits(m, tokenizer, PROMPTS[1]) for m in (fp32, int8))
    assert 0 < _rel_err(a, b) < 0.2  # int8 rounding: ~0.11 on this random model (large weights)
    g = Generator(int8, tokenizer, GenConfig(max_new_tokens=8, batch_size=3))
    alone = g.generate(PROMPTS[1:2])[0]
    ids = torch.tensor([g.encode(PROMPTS[1])])
    ref = int8.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                        eos_token_id=g.stop_ids, pad_token_id=g.pad_id)[0, ids.shape[1]:]
    assert alone.text == tokenizer.decode(g._finish(ref.tolist())[0], skip_special_tokens=True)
    # activations are quantised per forward pass (one scale per batch), so batch neighbours may change
    # an answer: the same batch gives the same answers, and every answer is complete
    g.forget_prefixes()
    first = [x.text for x in g.generate(PROMPTS)]
    g.forget_prefixes()
    assert [x.text for x in g.generate(PROMPTS)] == first and all(first)
    with pytest.raises(ValueError, match="CPU only"):
        load_generator(str(tiny_dir), dtype="int8", device="cuda")


def test_int8_generator_merges_each_adapter_into_its_own_quantised_copy(tiny_dir, adapter_dirs):
    from peft import PeftModel

    g = Generator.from_pretrained(str(tiny_dir), dtype="int8", config=GenConfig(max_new_tokens=8))
    base_model = g.model
    base = [x.text for x in g.generate(PROMPTS[:2])]
    g.load_adapter("lora", adapter_dirs["lora"])
    g.load_adapter("sd", adapter_dirs["sd"])
    assert g.adapters() == ["lora", "sd"]
    fp32, tokenizer = load_generator(str(tiny_dir), dtype="fp32", device="cpu")
    fp32_lora = PeftModel.from_pretrained(fp32, str(adapter_dirs["lora"])).eval()
    want = _next_token_logits(fp32_lora, tokenizer, PROMPTS[1])
    with g._using("lora"):
        got = _next_token_logits(g.model, tokenizer, PROMPTS[1])
    base_logits = _next_token_logits(base_model, tokenizer, PROMPTS[1])
    assert _rel_err(want, got) < 0.2 and _rel_err(want, base_logits) > 2 * _rel_err(want, got)
    lora = [x.text for x in g.generate(PROMPTS[:2], adapter="lora")]
    sd = [x.text for x in g.generate(PROMPTS[:2], adapter="sd")]
    assert lora != base and sd != base and lora != sd
    assert g.model is base_model and [x.text for x in g.generate(PROMPTS[:2])] == base
    g.forget_prefixes()
    assert "".join(g.stream(PROMPTS[1], adapter="sd")) == g.generate(PROMPTS[1:2], adapter="sd")[0].text


def test_adapter_for_another_base_is_refused(gen, adapter_dirs, tmp_path):
    with pytest.raises(ValueError, match=r"trained on base model tiny \(fingerprint 000000000000\)"):
        gen.load_adapter("alien", adapter_dirs["alien"])
    assert "alien" not in gen.adapters()
    with pytest.raises(FileNotFoundError, match="not an adapter"):
        gen.load_adapter("empty", tmp_path)


# ------------------------------------------------------------------------------- answer pipeline
class FakeSearcher:
    """A searcher over fixed hits (the pipeline takes any object with .search)."""

    def __init__(self, texts):
        from retriever import Hit

        self.hits = [Hit(chunk_id=f"c{i}", id=i, source=f"doc{i}.txt", text=t, score=1.0 - i / 10)
                     for i, t in enumerate(texts)]

    def search(self, question, k=5, filters=None, retriever=None):
        return self.hits[:k]


def test_answer_object_from_sources_and_generation():
    from ragtune.pipeline import AskOptions, answer_object, prepare

    searcher = FakeSearcher(["Paris is the capital of France.", "Berlin is the capital of Germany."])
    prepared = prepare("What is the capital of France?", AskOptions(style="cot", k=2), searcher=searcher)
    gen = Generation(text="Source [1] says Paris.\nAnswer: Paris [1] [7]", prompt_tokens=50, new_tokens=10,
                     first_token_ms=20.0, generate_ms=500.0)
    out = answer_object(prepared, gen, "tiny", None)
    assert out["answer"] == "Paris" and out["reasoning"] == "Source [1] says Paris."
    assert out["cited"] == [1]  # [7] is not a source given to the model
    assert [(s["n"], s["chunk_id"], s["source"]) for s in out["sources"]] == [(1, "c0", "doc0.txt"), (2, "c1", "doc1.txt")]
    assert out["timings"]["tokens_per_s"] == 20.0 and out["timings"]["prompt_tokens"] == 50


def test_ask_streams_and_returns_the_answer_object(gen):
    from ragtune.pipeline import AskOptions, ask

    searcher = FakeSearcher(["The Eiffel Tower was finished in 1889."])
    pieces: list[str] = []
    out = ask("When was the Eiffel Tower finished?", gen, AskOptions(k=1, max_new_tokens=8), searcher=searcher,
              on_piece=pieces.append)
    assert "".join(pieces) == out["raw"] and out["style"] == "rag-zero-shot"
    assert len(out["sources"]) == 1 and "reasoning" not in out
    assert set(out["timings"]) >= {"retrieve_ms", "prompt_tokens", "first_token_ms", "generate_ms", "tokens_per_s"}
    closed = ask("What is two plus two?", gen, AskOptions(mode="closed-book", style="few-shot", max_new_tokens=4))
    assert closed["sources"] == [] and closed["timings"]["new_tokens"] <= 4
    with pytest.raises(ValueError, match="needs an index"):
        ask("q?", gen, AskOptions(mode="rag"))


def test_ask_per_source_asks_each_source_alone_and_keeps_the_likeliest(gen):
    """fusion per-source: one prompt per source, each answer = what generate gives for that prompt
    alone, the winner = argmax p(source) x p(answer | source), citing its source."""
    import math

    from ragtune.pipeline import AskOptions, ask, prepare
    from ragtune.per_source import source_prior

    texts = ["The Eiffel Tower was finished in 1889.", "The Louvre holds the Mona Lisa.", "The Nile flows north."]
    searcher = FakeSearcher(texts)
    opts = AskOptions(k=3, max_new_tokens=6, fusion="per-source", early_exit=False)
    pieces: list[str] = []
    out = ask("When was the Eiffel Tower finished?", gen, opts, searcher=searcher, on_piece=pieces.append)
    prepared = prepare("When was the Eiffel Tower finished?", opts, searcher=searcher, tokenizer=gen.tokenizer)
    assert [p.sources[0].text for p in prepared.per_source] == texts
    alone = [gen.generate([p.messages], max_new_tokens=6)[0] for p in prepared.per_source]
    assert [c["answer"] for c in out["candidates"]] == [gen_style_answer(prepared, g) for g in alone]
    prior = source_prior([h.score for h in searcher.hits], 0.5)
    joint = [p * math.exp(g.logprob) for p, g in zip(prior, alone)]
    assert [c["p"] for c in out["candidates"]] == pytest.approx(joint, rel=1e-3, abs=1e-7)
    assert len(out["sources"]) == 3 and out["fusion"] == "per-source" and len(out["cited"]) == 1
    assert out["answer"] == out["candidates"][out["cited"][0] - 1]["answer"] and pieces == [out["answer"]]
    assert out["timings"]["prompt_tokens"] == sum(g.prompt_tokens for g in alone)
    # the early exit (default) answers and cites the same, asking only the sources that could matter
    for temperature in (0.5, 0.05):
        every = ask("When was the Eiffel Tower finished?", gen, AskOptions(
            k=3, max_new_tokens=6, fusion="per-source", early_exit=False, source_temperature=temperature),
            searcher=searcher)
        fast = ask("When was the Eiffel Tower finished?", gen, AskOptions(
            k=3, max_new_tokens=6, fusion="per-source", source_temperature=temperature), searcher=searcher)
        assert (fast["answer"], fast["cited"]) == (every["answer"], every["cited"])
        asked = [c for c in fast["candidates"] if c.get("asked", True)]
        assert asked == every["candidates"][:len(asked)]
        assert fast["timings"]["prompt_tokens"] == sum(g.prompt_tokens for g in alone[:len(asked)])
    with pytest.raises(ValueError, match="needs rag mode"):
        AskOptions(mode="closed-book", fusion="per-source")
    with pytest.raises(ValueError, match="fusion must be one of"):
        AskOptions(fusion="vote")


def test_ask_per_source_lm_prior_and_avoid_echo(gen, monkeypatch):
    """lm_prior: every source is asked with the question scored in its prefill, and the choice adds
    W x log p(question | source) to the retrieval scores; avoid_echo: an echoed reply is asked again
    with its first token banned."""
    import retriever.answer
    from ragtune.pipeline import AskOptions, ask, prepare
    from ragtune.per_source import answer_per_source

    q = "When was the Eiffel Tower finished?"
    searcher = FakeSearcher(["The Eiffel Tower was finished in 1889.", "The Louvre holds the Mona Lisa."])
    opts = AskOptions(k=2, max_new_tokens=4, fusion="per-source", lm_prior=2.0)
    out = ask(q, gen, opts, searcher=searcher)
    prepared = prepare(q, opts, searcher=searcher, tokenizer=gen.tokenizer)
    alone = [gen.generate([p.messages], max_new_tokens=4, score=[q])[0] for p in prepared.per_source]
    assert [c["question_logprob"] for c in out["candidates"]] == pytest.approx(
        [g.prompt_logprob for g in alone], abs=1e-3)
    pick = answer_per_source(prepared.style, alone, [p.sources[0] for p in prepared.per_source], lm_weight=2.0)
    assert out["cited"] == [pick.best + 1]

    calls = []
    real = gen.generate

    def spy(prompts, **kw):
        calls.append(kw.get("ban_first"))
        return real(prompts, **kw)

    monkeypatch.setattr(gen, "generate", spy)
    monkeypatch.setattr(retriever.answer, "is_echo", lambda answer, question: True)
    ask(q, gen, AskOptions(k=1, max_new_tokens=4, fusion="per-source", avoid_echo=True), searcher=searcher)
    assert calls[0] is None and len(calls) == 3  # the first ask, then two more, each banning one more token
    assert [len(b[0]) for b in calls[1:]] == [1, 2]
    with pytest.raises(ValueError, match="need fusion per-source"):
        AskOptions(lm_prior=1.0)
    with pytest.raises(ValueError, match="lm_prior must be"):
        AskOptions(fusion="per-source", lm_prior=-1)


def gen_style_answer(prepared, generation) -> str:
    return prepared.style.parse(generation.text).answer


def test_ask_cli_rejects_bad_input_in_one_line(capsys, tmp_path):
    from ragtune.cli import main

    assert main(["ask", "q?"]) == 1
    assert "--index DIR is required" in capsys.readouterr().err
    assert main(["ask", "q?", "--index", str(tmp_path / "none")]) == 1
    assert "index folder not found" in capsys.readouterr().err
    assert main(["ask", "q?", "--mode", "closed-book", "--max-new-tokens", "9999"]) == 1
    assert "max_new_tokens must be" in capsys.readouterr().err
    assert main(["ask", "q?", "--mode", "closed-book", "--style", "few-shot", "--fewshot-pool",
                 str(tmp_path / "pool.jsonl")]) == 1
    assert "few-shot pool file not found" in capsys.readouterr().err
    assert main(["ask", "q?", "--mode", "closed-book", "--fusion", "per-source"]) == 1
    assert "needs rag mode" in capsys.readouterr().err


def test_sub_batches_sort_by_length_and_bound_padding():
    from generator.core import sub_batches

    assert sub_batches([10, 50, 30, 48, 11], batch_size=2, max_padding=1.0) == [[1, 3], [2, 4], [0]]
    assert sub_batches([10, 50, 30, 48, 11], batch_size=8, max_padding=0.25) == [[1, 3], [2], [4, 0]]
    assert sub_batches([], 4, 0.1) == []
