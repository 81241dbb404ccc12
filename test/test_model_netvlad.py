"""Parity of the Patch-NetVLAD pooling + WPCA with the official implementation, on real images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlad_localization.images.io import load_rgb
from vlad_localization.model.backbones import build_backbone
from vlad_localization.model.checkpoint import load_module_state, read_checkpoint
from vlad_localization.model.netvlad import PatchNetVLADPooling
from vlad_localization.model.preprocess import to_network_input
from vlad_localization.model.regions import integral_feature, region_grid, square_region_sums
from vlad_localization.model.wpca import WPCA

reference = pytest.importorskip("patchnetvlad.models.patchnetvlad")

TOL = 1e-4
PRESETS = {  # patch sizes, strides, num_pcs (the official .ini files)
    "performance": ([2, 5, 8], [1, 1, 1], 4096),
    "speed": ([5], [1], 512),
    "storage": ([5], [1], 128),
}
K = 64


@pytest.fixture(scope="module")
def conv_features(vgg16_weights, datasets_dir) -> torch.Tensor:
    """VGG16 conv5_3 features of two real images (Tokyo 24/7 pair) at 176x240: 2 x 512 x 11 x 15
    (smaller than 480x640 to keep the reference fast; the arithmetic does not depend on size)."""
    backbone = build_backbone("vgg16")
    contents = read_checkpoint(vgg16_weights)
    load_module_state(backbone, contents.backbone_state, contents.path, "backbone")
    images = [load_rgb(datasets_dir / "tokyo_pair" / "ref" / "tokyo_db.png"),
              load_rgb(datasets_dir / "tokyo_pair" / "query" / "tokyo_query.jpg")]
    with torch.inference_mode():
        return backbone.eval()(to_network_input(images, 176, 240)).clone()


@pytest.fixture(scope="module")
def kmeans_init(conv_features):
    """Centroids + the L2-normalised descriptors they were clustered from (as get_clusters)."""
    import faiss

    descs = F.normalize(conv_features, dim=1).permute(0, 2, 3, 1).reshape(-1, 512).numpy()
    descs = np.ascontiguousarray(descs, dtype=np.float32)
    km = faiss.Kmeans(512, K, niter=20, seed=1, verbose=False)
    km.train(descs)
    return km.centroids.copy(), descs


def _reference_descriptors(ref_pool, wpca_conv, feats):
    """What the official feature_extract.py computes: pool, then get_pca_encoding on each."""
    with torch.no_grad():
        local, vlad_global = ref_pool(feats)

        def pca(v):  # WPCA = Sequential(Conv2d 1x1, Flatten, L2Norm(dim=-1)) on v[..., None, None];
            # a 1x1 conv on a 1x1 map is this linear map (run as one, as oneDNN's 1x1 conv with
            # 32768 input channels is very slow on CPU)
            return F.normalize(F.linear(v, wpca_conv.weight.flatten(1), wpca_conv.bias), p=2, dim=-1)

        n = feats.shape[0]
        g = pca(vlad_global)
        patches = []
        for this in local:  # N x KC x R -> (R*N) x KC -> pca -> N x R x D
            r = this.shape[2]
            p = pca(this.permute(2, 0, 1).reshape(-1, this.size(1)))
            patches.append(p.reshape(r, n, -1).permute(1, 0, 2))
    return g, patches


def _compare(ours, ref, wpca_conv, feats, sizes, projections=("auto",)):
    wpca = WPCA.from_conv(wpca_conv.weight.data, wpca_conv.bias.data)
    ref_global, ref_patches = _reference_descriptors(ref, wpca_conv, feats)
    for projection in projections:
        ours.projection = projection
        with torch.inference_mode():
            g, patches = ours(feats, wpca)
        assert g.shape == ref_global.shape
        assert (g - ref_global).abs().max() < TOL
        assert list(patches) == sizes
        for p, want in zip(sizes, ref_patches):
            assert patches[p].shape == want.shape
            assert (patches[p] - want).abs().max() < TOL, (projection, p)


@pytest.mark.parametrize("vladv2", [False, True], ids=["vladv1", "vladv2"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_matches_reference(preset, vladv2, conv_features):
    """Same seeded random NetVLAD + WPCA weights, same real conv features: same descriptors."""
    sizes, strides, num_pcs = PRESETS[preset]
    torch.manual_seed(7)
    ref = reference.PatchNetVLAD(K, 512, vladv2=vladv2, patch_sizes=",".join(map(str, sizes)),
                                 strides=",".join(map(str, strides)))
    wpca_conv = torch.nn.Conv2d(K * 512, num_pcs, kernel_size=1)
    ours = PatchNetVLADPooling(K, 512, vladv2=vladv2, patch_sizes=sizes, strides=strides)
    ours.load_state_dict(ref.state_dict())
    projections = ("regions", "cells") if preset == "performance" else ("auto",)
    _compare(ours, ref, wpca_conv, conv_features, sizes, projections)


@pytest.mark.parametrize("vladv2", [False, True], ids=["vladv1", "vladv2"])
def test_matches_reference_after_init_params(vladv2, conv_features, kmeans_init):
    """NetVLAD initialised by the reference's init_params (k-means on real descriptors): identical
    parameters, global descriptors within 1e-4, and patch VLAD blocks within 1e-4 wherever they are
    numerically defined.

    With k-means init the soft-assignment is very hard (alpha ~ 140): many clusters have a region
    mass a_k(R) of 1e-10 .. 0, and their intra-normalised blocks are then dominated by float
    round-off of the integral feature, in the reference as in any integral-feature implementation
    (the reference in float32 and float64 differ by > 1e-2 there). Blocks of clusters with a
    region mass above 1e-3 are compared.
    """
    clsts, descs = kmeans_init
    sizes, strides = [2, 5, 8], [1, 1, 1]
    ref = reference.PatchNetVLAD(K, 512, vladv2=vladv2, patch_sizes="2,5,8", strides="1,1,1")
    ref.init_params(clsts.copy(), descs.copy())
    ours = PatchNetVLADPooling(K, 512, vladv2=vladv2, patch_sizes=sizes, strides=strides)
    ours.init_params(clsts.copy(), descs.copy(), vladv2_gap="indices")  # the reference's quirk
    assert ours.alpha == pytest.approx(ref.alpha, rel=1e-9)
    for name, value in ref.state_dict().items():
        assert torch.allclose(ours.state_dict()[name], value.float(), rtol=1e-6, atol=0), name
    with torch.no_grad():
        ref_local, ref_global = ref(conv_features)
        g, patches = ours(conv_features)
        _, assign = ours.soft_assignment(conv_features)
    assert (g - ref_global).abs().max() < TOL
    n = conv_features.shape[0]
    for p, s, want in zip(sizes, strides, ref_local):
        mass = F.avg_pool2d(assign, p, s) * p * p  # N, K, h, w: A_k(R)
        mass = mass.flatten(2).transpose(1, 2)  # N, R, K
        got = patches[p].reshape(n, -1, K, 512)
        want = want.transpose(1, 2).reshape(n, -1, K, 512)
        defined = mass > 1e-3
        assert defined.float().mean() > 0.02
        # compare directions of the defined blocks (the global L2 norm is a common factor)
        got_blocks = F.normalize(got[defined], dim=-1)
        want_blocks = F.normalize(want[defined], dim=-1)
        assert (got_blocks - want_blocks).abs().max() < TOL, p


def test_raw_vlad_matches_reference_without_wpca(conv_features):
    torch.manual_seed(3)
    ref = reference.PatchNetVLAD(K, 512, patch_sizes="2,3", strides="1,2")
    ours = PatchNetVLADPooling(K, 512, patch_sizes=[2, 3], strides=[1, 2])
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        local, vlad_global = ref(conv_features)
        g, patches = ours(conv_features)
    assert (g - vlad_global).abs().max() < TOL
    for p, want in zip([2, 3], local):
        assert (patches[p] - want.transpose(1, 2)).abs().max() < TOL


def test_init_params_vladv1_matches_reference(kmeans_init):
    clsts, descs = kmeans_init
    ref = reference.PatchNetVLAD(K, 512)
    ref.init_params(clsts.copy(), descs.copy())
    ours = PatchNetVLADPooling(K, 512)
    ours.init_params(clsts, descs)
    assert ours.alpha == pytest.approx(ref.alpha, rel=1e-9)
    assert torch.equal(ours.conv.weight, ref.conv.weight.float())
    assert ours.conv.bias is None


def test_vladv2_alpha_from_distances(kmeans_init):
    clsts, descs = kmeans_init
    ours = PatchNetVLADPooling(K, 512, vladv2=True)
    ours.init_params(clsts, descs)
    assert ours.alpha > 0
    assert ours.conv.bias.shape == (K,)
    assert torch.allclose(ours.conv.weight[:, :, 0, 0], 2 * ours.alpha * ours.centroids)


def test_square_regions_match_reference_integral():
    torch.manual_seed(0)
    maps = torch.rand(2, 6, 9, 11)  # N, D, H, W
    integral_ref = reference.get_integral_feature(maps)
    ours = integral_feature(maps.permute(0, 2, 3, 1), 1, 2)
    assert torch.allclose(ours.permute(0, 3, 1, 2), integral_ref)
    for size, stride in [(1, 1), (2, 1), (3, 2), (5, 3), (9, 1)]:
        want = reference.get_square_regions_from_integral(integral_ref, size, stride) * size**2
        got = square_region_sums(ours, size, stride, 1, 2).permute(0, 3, 1, 2)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5)
        assert got.shape[2:] == region_grid(9, 11, size, stride)


def test_patch_too_large_for_grid_is_a_clear_error():
    pool = PatchNetVLADPooling(4, 8, patch_sizes=[8])
    with pytest.raises(ValueError, match="patch size 8 does not fit"):
        pool(torch.rand(1, 8, 5, 20))


def test_memory_is_chunked_over_clusters():
    pool = PatchNetVLADPooling(64, 512, patch_sizes=[5], chunk_bytes=64 << 20)
    assert pool._cluster_chunk(30 * 40 * 512 * 4) < 64


def _performance_pool(chunk_bytes: int) -> tuple[PatchNetVLADPooling, WPCA]:
    sizes, strides, num_pcs = PRESETS["performance"]
    torch.manual_seed(11)
    pool = PatchNetVLADPooling(K, 512, patch_sizes=sizes, strides=strides, chunk_bytes=chunk_bytes)
    wpca_conv = torch.nn.Conv2d(K * 512, num_pcs, kernel_size=1)
    return pool, WPCA.from_conv(wpca_conv.weight.data, wpca_conv.bias.data)


@pytest.mark.parametrize("projection", ["regions", "cells"])
def test_single_wpca_product_equals_chunked_projection(conv_features, projection):
    """All clusters in one chunk (one WPCA product per patch size, what a GPU with room gets) gives
    the descriptors of small cluster chunks (the CPU's cache-sized ones)."""
    results = []
    for chunk_bytes in (8 << 20, 64 << 30):
        pool, wpca = _performance_pool(chunk_bytes)
        pool.projection = projection
        n, c, h, w = conv_features.shape
        per_cluster = 5 * n * h * w * c + 2 * sum(n * math.prod(region_grid(h, w, p, 1)) for p in pool.patch_sizes) * c
        results.append((pool._cluster_chunk(per_cluster, pool.chunk_budget(conv_features.device)),
                        *pool(conv_features, wpca)))
    (few, g_few, p_few), (all_, g_all, p_all) = results
    assert few < K and all_ == K
    assert (g_few - g_all).abs().max() < 1e-6
    for size in p_few:
        assert (p_few[size] - p_all[size]).abs().max() < 1e-5


def test_gpu_chunk_budget_follows_free_device_memory(monkeypatch):
    """On a CUDA device the chunks may fill half of the free memory: the performance preset at
    640x480 then projects all 64 clusters at once on a large GPU, in chunks on a small one; the
    CPU keeps chunk_bytes."""
    pool, _ = _performance_pool(256 << 20)
    per_cluster = 5 * 30 * 40 * 512 + 2 * (29 * 39 + 26 * 36 + 23 * 33) * 512
    assert pool.chunk_budget(torch.device("cpu")) == 256 << 20
    for free, expect_all in ((70 << 30, True), (2 << 30, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None, free=free: (free, 80 << 30))
        budget = pool.chunk_budget(torch.device("cuda"))
        assert budget == max(256 << 20, free // 2)
        assert (pool._cluster_chunk(per_cluster, budget) == K) == expect_all
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 20, 80 << 30))
    assert pool.chunk_budget(torch.device("cuda")) == 256 << 20  # never below chunk_bytes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")
def test_cuda_single_product_matches_cpu(conv_features):
    pool, wpca = _performance_pool(256 << 20)
    n, c, h, w = conv_features.shape
    per_cluster = 5 * n * h * w * c + 2 * sum(n * math.prod(region_grid(h, w, p, 1)) for p in pool.patch_sizes) * c
    assert pool._cluster_chunk(per_cluster, pool.chunk_budget(torch.device("cuda"))) == K
    g_cpu, p_cpu = pool(conv_features, wpca)
    pool_gpu, wpca_gpu = pool.cuda(), wpca.cuda()
    with torch.inference_mode():
        g_gpu, p_gpu = pool_gpu(conv_features.cuda(), wpca_gpu)
    assert (g_cpu - g_gpu.cpu()).abs().max() < 1e-4
    for size in p_cpu:
        assert (p_cpu[size] - p_gpu[size].cpu()).abs().max() < 1e-4
