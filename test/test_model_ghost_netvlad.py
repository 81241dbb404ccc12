"""GhostVLAD aggregator: shapes, masks, ghost clusters dropped, gradients."""
from __future__ import annotations

import pytest
import torch

from vlad_localization.model.ghost_netvlad import GhostNetVLAD


@pytest.fixture
def layer():
    torch.manual_seed(0)
    return GhostNetVLAD(cluster_size=8, feature_size=16, ghost_clusters=2, add_batch_norm=True)


def test_output_shape_and_norm(layer):
    out = layer(torch.randn(3, 10, 16))
    assert out.shape == (3, 8 * 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_ghost_assignments_are_dropped(layer):
    """The output is the VLAD of the real clusters' assignments only (softmax over K + G)."""
    layer.eval()
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        assign = layer.soft_assignment(x)
        out = layer(x)
    assert assign.shape == (2, 12, 10)
    assert torch.allclose(assign.sum(-1), torch.ones(2, 12), atol=1e-5)
    real = assign[:, :, :8]
    vlad = torch.einsum("bnk,bnd->bdk", real, x) - real.sum(1, keepdim=True) * layer.clusters2
    vlad = torch.nn.functional.normalize(vlad, dim=1).reshape(2, -1)
    assert torch.allclose(out, torch.nn.functional.normalize(vlad, dim=1), atol=1e-5)


def test_ghost_cluster_absorbs_feature_without_effect():
    torch.manual_seed(1)
    layer = GhostNetVLAD(4, 6, ghost_clusters=1, add_batch_norm=False)
    x = torch.randn(1, 5, 6)
    with torch.no_grad():
        base = layer(x)
        # an outlier aligned with a huge ghost-cluster weight goes (almost) entirely to the ghost
        direction = torch.randn(6)
        layer.clusters[:, 4] = 50 * direction
        outlier = (direction / direction.norm()).view(1, 1, 6) * 10
        with_outlier = layer(torch.cat([x, outlier], dim=1))
        without = layer(x)
    assert torch.allclose(with_outlier, without, atol=1e-4)
    assert base.shape == without.shape


def test_mask_equals_dropping_features(layer):
    layer.eval()
    x = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 5:] = False
    with torch.no_grad():
        masked = layer(x, mask)
        dropped = layer(x[:, :5])
    assert torch.allclose(masked, dropped, atol=1e-5)


def test_gradients_flow(layer):
    x = torch.randn(4, 9, 16, requires_grad=True)
    layer(x).square().sum().backward()
    layer(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None, name


def test_bad_shapes_rejected(layer):
    with pytest.raises(ValueError, match="B x N x 16"):
        layer(torch.randn(2, 16))
    with pytest.raises(ValueError, match="mask"):
        layer(torch.randn(2, 3, 16), torch.ones(2, 4))
