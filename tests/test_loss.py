import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import CircleLoss as PmlCircleLoss

from replearn.training.loss import circle_loss, circle_loss_per_anchor


def _loss_and_grad(fn, raw: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    raw = raw.clone().requires_grad_()
    loss = fn(raw, labels)
    (grad,) = torch.autograd.grad(loss, raw)
    return loss.detach(), grad


CASES = [(8, 3, 0.4, 80.0), (32, 8, 0.25, 256.0), (24, 12, 0.4, 80.0), (16, 16, 0.3, 32.0)]


@pytest.mark.parametrize(("n", "classes", "m", "gamma"), CASES)
def test_equals_pytorch_metric_learning_and_the_per_anchor_definition(n, classes, m, gamma) -> None:
    torch.manual_seed(n)
    raw = torch.randn(n, 16, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,))

    def ours(x, y):
        return circle_loss(F.normalize(x, dim=1), y, m, gamma)

    def loop(x, y):
        return circle_loss_per_anchor(F.normalize(x, dim=1), y, m, gamma)

    def pml(x, y):
        return PmlCircleLoss(m=m, gamma=gamma)(x, y)

    loss, grad = _loss_and_grad(lambda x, y: ours(x.float(), y), raw, labels)
    for reference in (loop, pml):
        ref_loss, ref_grad = _loss_and_grad(lambda x, y, f=reference: f(x.float(), y), raw, labels)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_hand_computed_value() -> None:
    """Two positives at similarity 0.8 and one negative at 0.6 for anchor 0, by the paper's formula."""
    m, gamma = 0.25, 10.0
    a = torch.tensor([1.0, 0.0, 0.0])
    p = torch.tensor([0.8, 0.6, 0.0])
    n = torch.tensor([0.6, 0.0, 0.8])
    embeddings, labels = torch.stack([a, p, n]), torch.tensor([0, 0, 1])
    sims = embeddings @ embeddings.T

    def row(s_p: float, s_n: list[float]) -> float:
        lp = -gamma * max(0.0, 1 + m - s_p) * (s_p - (1 - m))
        ln = [gamma * max(0.0, s + m) * (s - m) for s in s_n]
        return math.log1p(math.exp(lp + math.log(sum(math.exp(v) for v in ln))))

    expected = [
        row(float(sims[0, 1]), [float(sims[0, 2])]),
        row(float(sims[1, 0]), [float(sims[1, 2])]),
    ]  # anchor 2 has no positive and is left out of the mean
    value = circle_loss(embeddings, labels, m, gamma)
    assert value.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_rows_without_positives_add_nothing_and_give_zero_gradient() -> None:
    torch.manual_seed(0)
    raw = torch.randn(6, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])  # 2 and 3 are singletons
    embeddings = F.normalize(raw, dim=1).requires_grad_()
    loss = circle_loss(embeddings, labels, 0.4, 80.0)
    loss_kept = circle_loss(embeddings[:4].detach(), labels[:4], 0.4, 80.0)
    assert torch.isfinite(loss)
    # singleton anchors contribute nothing, but they still act as negatives for the others
    assert loss.item() != pytest.approx(loss_kept.item())
    expected = circle_loss_per_anchor(embeddings.detach(), labels, 0.4, 80.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    lonely = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    value = circle_loss(lonely, torch.arange(4), 0.4, 80.0)
    value.backward()
    assert value.item() == 0.0
    assert lonely.grad is not None and torch.all(lonely.grad == 0)


def test_stable_at_large_gamma() -> None:
    """gamma=256 on opposite-pointing positives would overflow a naive exp; logsumexp keeps it finite."""
    embeddings = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = circle_loss(embeddings, labels, 0.25, 256.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 100
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()
