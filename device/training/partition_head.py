"""A small head that tells a catalogue-free device how much belief the whole catalogue holds, from its user vector.

The full-catalogue regret (device.runtime.consistency.catalogue_regret) needs the SRM's softmax over every item:
(top-K mass of the catalogue) - (top-K mass of the cached list). A device without the catalogue knows the list's
logits but not the softmax's normaliser. This head predicts, from the user vector u alone, log Z = logsumexp of
u . v_i over the items a user could still be shown, and log T = logsumexp of the K largest of them; the device then
computes the regret with the list's own logits ("est-regret"). It is fitted after the SRM, on the user states of
training-history prefixes (each user's last `holdout` interactions are never used: no stream event of protocol B),
with the targets computed over the model's own item table, and exported inside the user encoder's graph.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.sequences import pad_left

TOP_K = 10  # the slate size the regret is defined for (the simulator's and the device's default K)


class PartitionHead(nn.Module):
    """u (B, d) -> (B, 2): [log Z, log T] (a 2-layer MLP on standardised targets)."""

    def __init__(self, dim: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, 2))
        self.register_buffer("mean", torch.zeros(2))
        self.register_buffer("std", torch.ones(2))

    def forward(self, user: torch.Tensor) -> torch.Tensor:
        return self.net(user) * self.std + self.mean


def training_histories(sequences, max_len: int, holdout: int = 20, per_user: int = 48,
                       seed: int = 0) -> list[np.ndarray]:
    """Up to `per_user` random prefixes (the last max_len items of each) per user, all ending before the user's last
    `holdout` interactions."""
    rng = np.random.default_rng(seed)
    out = []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        end = len(seq) - holdout
        if end < 2:
            continue
        for t in rng.integers(1, end + 1, min(per_user, end)):
            out.append(seq[max(0, t - max_len):t])
    return out


def targets(model, histories: list[np.ndarray], k: int = TOP_K, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(user vectors (n, d), [log Z, log T] (n, 2)) over the items each history may still be shown."""
    users, out = [], []
    table = model.item_table().detach()
    with torch.no_grad():
        for start in range(0, len(histories), batch):
            hist = torch.from_numpy(pad_left(histories[start:start + batch], model.max_len))
            u = model.user_state(hist) if hasattr(model, "user_state") else model.encode(hist)[:, -1, :]
            logits = u @ table.T
            logits[:, 0] = -torch.inf
            logits.scatter_(1, hist, -torch.inf)  # consumed (and padding) items are never shown
            out.append(torch.stack([torch.logsumexp(logits, 1), torch.logsumexp(logits.topk(k, 1).values, 1)], 1))
            users.append(u)
    return torch.cat(users), torch.cat(out)


def fit_partition_head(model, sequences, seed: int = 0, epochs: int = 100, holdout: int = 20) -> tuple[PartitionHead, dict]:
    """Fit the head on 80% of the prefixes; returns it and its held-out R^2 and RMSE for log Z and log T."""
    torch.manual_seed(seed)
    users, y = targets(model, training_histories(sequences, model.max_len, holdout, seed=seed))
    order = torch.randperm(len(users))
    train, test = order[: int(0.8 * len(order))], order[int(0.8 * len(order)):]
    head = PartitionHead(users.shape[1])
    head.mean.copy_(y[train].mean(0))
    head.std.copy_(y[train].std(0).clamp_min(1e-6))
    optimiser = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train))].split(512):
            loss = (((head(users[batch]) - y[batch]) / head.std) ** 2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    head.eval()
    with torch.no_grad():
        err = head(users[test]) - y[test]
    figures = {}
    for j, name in enumerate(("log_z", "log_top")):
        mse = float((err[:, j] ** 2).mean())
        figures[f"head_{name}_r2"] = 1.0 - mse / float(y[test, j].var())
        figures[f"head_{name}_rmse"] = mse ** 0.5
    figures["head_examples"] = len(users)
    return head, figures
