"""Batch plans and collation: length-grouped batches, packed rows, a seeded order per epoch.

The order of micro-batches is a pure function of (lengths, batch size, seed, epoch), so
a resumed run recomputes it and continues at the same position.
"""

from __future__ import annotations

import random
from typing import Sequence

from tuner.data import IGNORE, Features


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """Index lists of the micro-batches of one epoch.

    With `group_by_length`, examples are shuffled, then sorted by length inside windows of
    32 batches, cut into batches (similar lengths: little padding), and the batches are
    shuffled again so long and short ones alternate across the epoch.
    """
    rng = random.Random(f"{seed}:{epoch}")
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if not group_by_length:
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    window = batch_size * 32
    batches = []
    for w in range(0, len(idx), window):
        group = sorted(idx[w:w + window], key=lambda j: -lengths[j])
        batches += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(feats: Sequence[Features], pad_id: int) -> dict:
    """Right-padded tensors. Packed rows get position ids and no attention mask (the
    block-diagonal mask is derived from the position restarts); plain rows get a mask;
    shared-prefix rows get position ids and an explicit 4D mask (`shared_prefix_mask`)."""
    import torch

    n = max(len(f) for f in feats)
    ids = torch.full((len(feats), n), pad_id, dtype=torch.long)
    labels = torch.full((len(feats), n), IGNORE, dtype=torch.long)
    packed = any(f.position_ids is not None for f in feats)
    mask = torch.zeros((len(feats), n), dtype=torch.long)
    pos = torch.zeros((len(feats), n), dtype=torch.long)
    for r, f in enumerate(feats):
        m = len(f)
        ids[r, :m] = torch.tensor(f.input_ids)
        labels[r, :m] = torch.tensor(f.labels)
        mask[r, :m] = 1
        pos[r, :m] = torch.tensor(f.position_ids if f.position_ids is not None else list(range(m)))
        pos[r, m:] = torch.arange(n - m)  # the padding is its own (label-free) segment
    batch = {"input_ids": ids, "labels": labels, "n_tokens": int(mask.sum())}
    if any(f.branch_ids is not None for f in feats):
        batch["position_ids"] = pos
        batch["attention_mask"] = shared_prefix_mask(feats, pos)
    elif packed:
        batch["position_ids"] = pos
    else:
        batch["attention_mask"] = mask
    return batch


def shared_prefix_mask(feats: Sequence[Features], pos):
    """Boolean (B, 1, T, T) attention mask of shared-prefix rows: causal, within one packed
    sequence (a new one starts where the position ids restart at 0, padding included), and a
    branch token sees only branch 0 (the shared prefix) and its own branch."""
    import torch

    branch = torch.zeros_like(pos)
    for r, f in enumerate(feats):
        if f.branch_ids is not None:
            branch[r, :len(f)] = torch.tensor(f.branch_ids)
    seq = (pos == 0).cumsum(dim=1)
    n = pos.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    same_seq = seq[:, :, None] == seq[:, None, :]
    visible = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    return (causal & same_seq & visible)[:, None]
