"""Circle loss (Sun et al., CVPR 2020), vectorized over the batch's N x N cosine-similarity matrix.

For an anchor with positive similarities s_p and negative similarities s_n:

    L = softplus( logsumexp_p(-gamma * a_p * (s_p - (1 - m))) + logsumexp_n(gamma * a_n * (s_n - m)) )
    a_p = relu(1 + m - s_p),  a_n = relu(s_n + m)   (weights, held constant in the gradient)

so each similarity is pushed towards its own optimum (1 - m for positives, m for negatives) with
a weight that grows with its distance from it. An anchor without positives or negatives adds
nothing; the batch loss is the mean over the anchors that have both. These are exactly the
semantics (m, gamma, detached weights, averaging) of pytorch-metric-learning's CircleLoss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def circle_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, gamma: float) -> torch.Tensor:
    """Mean Circle loss of L2-normalised `embeddings` (N, D) with integer `labels` (N,).

    One matrix product, two masked logsumexps: no Python loop, no boolean indexing (which would
    force a device sync), so its cost stays flat in N until the matrix itself dominates.

    >>> e = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=1)
    >>> round(float(circle_loss(e, torch.tensor([0, 0, 1]), margin=0.4, gamma=80.0)), 4)
    0.0
    """
    embeddings = embeddings.float()
    similarity = embeddings @ embeddings.T
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    weight_p = torch.relu(1.0 + margin - similarity.detach())
    weight_n = torch.relu(similarity.detach() + margin)
    # A large finite fill, not -inf: rows without any member stay finite (and are dropped below),
    # so their gradient is an exact zero instead of 0 * nan.
    fill = torch.finfo(similarity.dtype).min / 4
    logits_p = torch.where(positive, -gamma * weight_p * (similarity - (1.0 - margin)), fill)
    logits_n = torch.where(negative, gamma * weight_n * (similarity - margin), fill)
    valid = positive.any(dim=1) & negative.any(dim=1)
    losses = F.softplus(torch.logsumexp(logits_p, dim=1) + torch.logsumexp(logits_n, dim=1))
    losses = torch.where(valid, losses, torch.zeros_like(losses))
    return losses.sum() / valid.sum().clamp_min(1)


def circle_loss_per_anchor(embeddings: torch.Tensor, labels: torch.Tensor, margin: float, gamma: float) -> torch.Tensor:
    """The same loss written anchor by anchor, as the paper states it.

    It is the readable definition that tests check `circle_loss` against, and the baseline
    benchmarks/train.py times the vectorized version against; training never calls it.
    """
    losses = []
    for i in range(len(labels)):
        others = torch.arange(len(labels), device=labels.device) != i
        s_p = embeddings[(labels == labels[i]) & others] @ embeddings[i]
        s_n = embeddings[labels != labels[i]] @ embeddings[i]
        if len(s_p) == 0 or len(s_n) == 0:
            continue
        a_p = torch.relu(1.0 + margin - s_p.detach())
        a_n = torch.relu(s_n.detach() + margin)
        lse_p = torch.logsumexp(-gamma * a_p * (s_p - (1.0 - margin)), dim=0)
        lse_n = torch.logsumexp(gamma * a_n * (s_n - margin), dim=0)
        losses.append(F.softplus(lse_p + lse_n))
    return torch.stack(losses).mean() if losses else embeddings.sum() * 0.0


class CircleLoss(nn.Module):
    """`circle_loss` with its margin and gamma bound, as a module."""

    def __init__(self, margin: float, gamma: float) -> None:
        super().__init__()
        self.margin = margin
        self.gamma = gamma

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return circle_loss(embeddings, labels, self.margin, self.gamma)
