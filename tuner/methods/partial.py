"""Partial and full fine-tuning: BitFit, last-N-layers ("fine-tuning I"), full ("fine-tuning II").

These train a subset of the base's own parameters (BitFit may add zero biases to
bias-free models), and are saved as a state dict of the tuned tensors. Trainable
tensors are kept in fp32 (master weights); the loop runs the forward under bf16
autocast when the base is bf16, so mixed dtypes meet only inside autocast.
"""

from __future__ import annotations

from typing import Any

from tuner.methods import Method, register


def freeze_all(model) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(params) -> None:
    import torch

    for p in params:
        if p.dtype != torch.float32 and p.is_floating_point():
            p.data = p.data.float()  # fp32 master copy of what we train
        p.requires_grad_(True)


def linear_modules(model, target: str | list[str]) -> list[tuple[str, Any]]:
    """(name, module) of the nn.Linear layers matched by `target` ('all-linear' skips the output head)."""
    import torch

    head = model.get_output_embeddings()
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or mod is head:
            continue
        if target == "all-linear" or any(name == t or name.endswith("." + t) for t in target):
            out.append((name, mod))
    return out


def decoder_layers(model):
    """The ModuleList of transformer blocks (the one whose length is num_hidden_layers)."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    for m in lists:
        if n is None or len(m) == n:
            return m
    raise ValueError("cannot find the transformer blocks of this model (no ModuleList of num_hidden_layers)")


def add_missing_biases(model, target) -> list[str]:
    """Give bias-free linear layers a zero fp32 bias; return their module names."""
    import torch

    added = []
    for name, mod in linear_modules(model, target):
        if mod.bias is None:
            mod.bias = torch.nn.Parameter(torch.zeros(mod.out_features, dtype=torch.float32,
                                                      device=mod.weight.device))
            added.append(name)
    return added


@register
class BitFit(Method):
    name = "bitfit"
    kind = "state_dict"

    def prepare(self, model, args, tokenizer=None):
        freeze_all(model)
        added = add_missing_biases(model, args.target_modules) if args.add_missing else []
        biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
        if not biases:
            raise ValueError("bitfit: this model has no bias terms; set method_args.add_missing=true")
        unfreeze(biases)
        model.ragtune_added_biases = added  # recorded in the adapter metadata, re-created on load
        return model


@register
class LastLayers(Method):
    name = "last-layers"
    kind = "state_dict"

    def prepare(self, model, args, tokenizer=None):
        freeze_all(model)
        layers = decoder_layers(model)
        if args.n_layers > len(layers):
            raise ValueError(f"LastLayersArgs.n_layers={args.n_layers} but the model has {len(layers)} blocks")
        params = [p for layer in list(layers)[-args.n_layers:] for p in layer.parameters()]
        if args.train_head:
            params += list(model.get_output_embeddings().parameters())
            norm = getattr(getattr(model, "model", model), "norm", None)
            if norm is not None:
                params += list(norm.parameters())
        unfreeze(params)
        return model


@register
class Full(Method):
    name = "full"
    kind = "state_dict"

    def prepare(self, model, args, tokenizer=None):
        freeze_all(model)
        emb = model.get_input_embeddings().weight
        tied = emb is model.get_output_embeddings().weight
        unfreeze([p for p in model.parameters() if args.train_embeddings or p is not emb or tied])
        return model
