"""peft-backed methods: LoRA, QLoRA, DoRA, IA3, soft prompt tuning, prefix tuning, P-tuning."""

from __future__ import annotations

from typing import Any

from tuner.methods import Method, register


def _target(tm: str | list[str]) -> str | list[str]:
    return "all-linear" if tm == "all-linear" else list(tm)


def _linear_names(model) -> list[str]:
    """Short names of the model's linear layers but the head (q_proj, ..., down_proj): "all-linear" spelled
    out, which peft needs beside layers_to_transform (it then adapts only those inside the chosen blocks)."""
    from tuner.methods.partial import linear_modules

    return sorted({name.rsplit(".", 1)[-1] for name, _ in linear_modules(model, "all-linear")})


@register
class LoRA(Method):
    name = "lora"
    use_dora = False

    def peft_config(self, args: Any, model=None):
        from peft import LoraConfig, TaskType

        target, layers = _target(args.target_modules), None
        if args.layers:
            n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
            if not n or args.layers > n:
                raise ValueError(f"method_args.layers={args.layers}, but this model has {n} transformer blocks")
            layers = list(range(n - args.layers, n))
            if target == "all-linear":  # peft takes layers_to_transform only with named targets
                target = _linear_names(model)
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=args.r, lora_alpha=args.alpha,
                          lora_dropout=args.dropout, target_modules=target,
                          use_rslora=args.use_rslora, use_dora=self.use_dora, layers_to_transform=layers)

    def prepare(self, model, args, tokenizer=None):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(args, model))


@register
class DoRA(LoRA):
    name = "dora"
    use_dora = True


@register
class QLoRA(LoRA):
    """LoRA on a base loaded in 4-bit (see tuner.loading.load_base with quantize=True)."""

    name = "qlora"
    quantized = True

    def prepare(self, model, args, tokenizer=None):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if not getattr(model, "is_loaded_in_4bit", False):
            raise ValueError("qlora needs a base loaded in 4-bit (tuner.loading.load_base(..., quantize=...))")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
        return get_peft_model(model, self.peft_config(args, model))


@register
class IA3(Method):
    name = "ia3"

    def prepare(self, model, args, tokenizer=None):
        from peft import IA3Config, TaskType, get_peft_model

        cfg = IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=list(args.target_modules),
                        feedforward_modules=list(args.feedforward_modules))
        return get_peft_model(model, cfg)


@register
class PromptTuning(Method):
    name = "prompt-tuning"

    def prepare(self, model, args, tokenizer=None):
        import torch
        from peft import PromptTuningConfig, TaskType, get_peft_model

        cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.num_virtual_tokens)
        peft_model = get_peft_model(model, cfg)
        if args.init_text and tokenizer is not None:
            # What peft's PromptTuningInit.TEXT does, without re-loading the tokenizer by name
            # (a GGUF-loaded base has no tokenizer path peft could use).
            ids = tokenizer(args.init_text, add_special_tokens=False)["input_ids"]
            n = args.num_virtual_tokens
            ids = (ids * (n // max(len(ids), 1) + 1))[:n] if ids else []
            if ids:
                emb = peft_model.get_input_embeddings()
                enc = peft_model.prompt_encoder[peft_model.active_adapter].embedding
                with torch.no_grad():
                    enc.weight.copy_(emb(torch.tensor(ids)).detach().to(enc.weight.dtype))
        return peft_model


@register
class PrefixTuning(Method):
    name = "prefix-tuning"

    def prepare(self, model, args, tokenizer=None):
        from peft import PrefixTuningConfig, TaskType, get_peft_model

        cfg = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.num_virtual_tokens,
                                 prefix_projection=args.projection, encoder_hidden_size=args.encoder_hidden_size)
        return get_peft_model(model, cfg)


@register
class PTuning(Method):
    name = "p-tuning"

    def prepare(self, model, args, tokenizer=None):
        from peft import PromptEncoderConfig, TaskType, get_peft_model

        cfg = PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.num_virtual_tokens,
                                  encoder_reparameterization_type=args.encoder,
                                  encoder_hidden_size=args.encoder_hidden_size)
        return get_peft_model(model, cfg)
