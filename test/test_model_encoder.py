"""The Encoder and the off-the-shelf checkpoint builder, on real images and real VGG16 weights."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlad_localization.images.io import load_rgb
from vlad_localization.model.backbones import build_backbone
from vlad_localization.model.checkpoint import load_module_state, read_checkpoint
from vlad_localization.model.encoder import Encoder
from vlad_localization.model.geometry import VGG16_CONV5_3
from vlad_localization.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_network_input


@pytest.fixture(scope="module")
def vgg(vgg16_weights):
    net = build_backbone("vgg16")
    contents = read_checkpoint(vgg16_weights)
    load_module_state(net, contents.backbone_state, contents.path, "backbone")
    return net.eval()


def _functional_vgg16(state: dict, x: torch.Tensor) -> torch.Tensor:
    """An independent VGG16 conv1_1..conv5_3 forward from the raw ``features.N`` weights."""
    convs = sorted({int(k.split(".")[1]) for k in state}, key=int)
    pools_after = {2, 7, 14, 21}  # the max-pools follow conv1_2, conv2_2, conv3_3, conv4_3
    for i, n in enumerate(convs):
        x = F.conv2d(x, state[f"features.{n}.weight"], state[f"features.{n}.bias"], padding=1)
        if i < len(convs) - 1:
            x = F.relu(x)
        if n in pools_after:
            x = F.max_pool2d(x, 2)
    return x


def test_imagenet_vgg16_gives_30x40_grid_at_640x480(vgg, vgg16_weights, datasets_dir):
    image = load_rgb(datasets_dir / "tokyo_pair" / "ref" / "tokyo_db.png")
    x = to_network_input([image], 480, 640)
    with torch.inference_mode():
        feats = vgg(x)
        want = _functional_vgg16(torch.load(vgg16_weights, weights_only=True), x)
    assert feats.shape == (1, 512, 30, 40)
    assert VGG16_CONV5_3.grid_size(480, 640) == (30, 40)
    assert torch.allclose(feats, want, atol=1e-4, rtol=1e-4)
    assert (feats < 0).any()  # conv5_3 is taken before its ReLU, as the reference's [:-2]


def test_preprocess_is_pil_bilinear_and_imagenet_normalised(datasets_dir):
    image = load_rgb(datasets_dir / "gardenspoint_10" / "query" / "0.jpg")
    x = to_network_input([image], 240, 320)
    resized = np.asarray(Image.fromarray(image).resize((320, 240), Image.BILINEAR)).astype(np.float32) / 255
    want = (resized - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    assert x.shape == (1, 3, 240, 320)
    assert np.allclose(x[0].permute(1, 2, 0).numpy(), want, atol=1e-6)
    kept = to_network_input([image], 0, 0)
    assert kept.shape[2:] == image.shape[:2]


def test_encoder_on_real_images(speed_encoder, speed_config, datasets_dir):
    images = [load_rgb(datasets_dir / "campus_loop_72" / f"image_{i}.png") for i in (0, 71, 35)]
    desc = speed_encoder.encode(images)
    assert desc.global_desc.shape == (3, 128)
    assert desc.patches[5].shape == (3, 11 * 16, 128)
    assert desc.grid == (15, 20) and desc.image_size == (240, 320)
    assert torch.allclose(desc.global_desc.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(desc.patches[5].norm(dim=2), torch.ones(3, 176), atol=1e-5)
    # image_71 revisits image_0: the loop closure is the nearest neighbour of image_0's descriptor
    sims = desc.global_desc[0] @ desc.global_desc.t()
    assert sims[1] > sims[2]
    # batching does not change results (encode_tensor on one image at a time)
    single = speed_encoder.encode_tensor(speed_encoder.preprocess(images[1:2]))
    assert torch.allclose(single.global_desc, desc.global_desc[1:2], atol=1e-5)
    assert torch.allclose(single.patches[5], desc.patches[5][1:2], atol=1e-5)
    ident = speed_encoder.identity()
    assert ident["num_clusters"] == speed_config.model.num_clusters == 16
    assert ident["num_pcs"] == speed_config.model.num_pcs == 128
    assert len(ident["checkpoint_sha256"]) == 64
    assert speed_encoder.geometry == VGG16_CONV5_3


def test_batch_size_splits_batches(speed_checkpoint, speed_config, datasets_dir):
    cfg = dataclasses.replace(speed_config.model, batch_size=2)
    enc = Encoder.from_checkpoint(speed_checkpoint, cfg)
    images = [load_rgb(datasets_dir / "gardenspoint_10" / "ref" / f"{i}.jpg") for i in range(3)]
    desc = enc.encode(images)
    assert len(desc) == 3 and desc.patches[5].shape[0] == 3
    enc.release()
    assert enc.device.type == "cpu"


def test_offtheshelf_checkpoint_runs_in_the_reference(speed_checkpoint, speed_encoder, datasets_dir):
    """The init-model output is an official checkpoint: the reference PatchNetVLAD + WPCA load it
    and produce our descriptors."""
    reference = pytest.importorskip("patchnetvlad.models.patchnetvlad")
    state = torch.load(speed_checkpoint, weights_only=True)["state_dict"]
    ref = reference.PatchNetVLAD(16, 512, patch_sizes="5", strides="1")
    ref.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("pool.")})
    x = speed_encoder.preprocess([load_rgb(datasets_dir / "tokyo_pair" / "ref" / "tokyo_db.png")])
    with torch.no_grad():
        feats = speed_encoder.backbone(x)
        local, glob = ref(feats)
        w = state["WPCA.0.weight"].flatten(1)
        pca = lambda v: F.normalize(F.linear(v, w, state["WPCA.0.bias"]), dim=-1)  # noqa: E731
    ours = speed_encoder.encode_tensor(x)
    assert (ours.global_desc - pca(glob)).abs().max() < 1e-4
    # patch blocks of (numerically) empty clusters are integral round-off in both: compare
    # patch similarities instead of raw values
    want = pca(local[0][0].t())
    cos = (ours.patches[5][0] * want).sum(-1)
    assert cos.median() > 0.999


def test_num_pcs_capped_with_few_images(tmp_path, vgg16_weights, datasets_dir):
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint

    images = [datasets_dir / "campus_loop_72" / "image_0.png", datasets_dir / "campus_loop_72" / "image_9.png"]
    with pytest.warns(UserWarning, match="num_pcs 512 capped"):
        path = build_offtheshelf_checkpoint(
            vgg16_weights, images, tmp_path / "tiny.pth.tar", num_clusters=4, num_pcs=512,
            image_size=(128, 160), progress=False, kmeans_iterations=5,
        )
    contents = read_checkpoint(path)
    assert contents.num_clusters == 4
    assert contents.num_pcs < 512
    assert contents.metadata["kind"] == "off-the-shelf"
    with pytest.raises(ValueError, match="conv descriptors for 4096 clusters"):
        build_offtheshelf_checkpoint(vgg16_weights, images, tmp_path / "x.pth.tar", num_clusters=4096,
                                     image_size=(128, 160), progress=False)


@pytest.mark.parametrize("n, d", [(300, 40), (40, 300)], ids=["primal", "dual"])
def test_fit_wpca_whitens_its_samples(n, d):
    """W x + b of the fitting samples has zero mean and identity covariance on the kept PCs, in
    both the primal (n > d) and the dual Gram (n < d, blockwise back-projection) branch."""
    from vlad_localization.model.init_model import fit_wpca

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, d)) * np.linspace(3.0, 0.1, d)).astype(np.float32)
    pcs = min(n, d) // 2
    weight, bias = fit_wpca(x, pcs)
    y = x.astype(np.float64) @ weight.reshape(pcs, d).T.astype(np.float64) + bias
    assert np.abs(y.mean(0)).max() < 1e-3
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(pcs), atol=2e-3)


def test_vlad_samples_keep_only_the_drawn_rows(speed_encoder, datasets_dir):
    """The PCA samples are drawn up front and only those rows of each image are kept: the result
    equals subsampling the full stack of every image's VLAD rows with the same draw."""
    from vlad_localization.model.init_model import vlad_samples

    images = [datasets_dir / "campus_loop_72" / f"image_{i}.png" for i in (0, 30, 60)]
    with torch.no_grad():
        feats = [speed_encoder.backbone(speed_encoder.preprocess([load_rgb(p)])).float() for p in images]
        full = np.concatenate([
            torch.cat([g] + [p[0] for p in patches.values()]).numpy()
            for g, patches in (speed_encoder.pooling(f) for f in feats)
        ])
    got = vlad_samples(speed_encoder.pooling, zip(images, feats), len(images), "cpu", 100, np.random.default_rng(5), False)
    assert full.shape[0] > 100
    want = full[np.sort(np.random.default_rng(5).choice(len(full), 100, replace=False))]
    np.testing.assert_array_equal(got, want)


def test_degenerate_inputs_give_clear_errors(speed_encoder, datasets_dir, vgg16_weights, tmp_path):
    """Inputs too small for the patch size, duplicate training descriptors, one image without
    patches for a WPCA, and mixed sizes for the PCA sample: a ValueError saying what to change."""
    from vlad_localization.model.init_model import build_offtheshelf_checkpoint, vlad_samples
    from vlad_localization.model.netvlad import PatchNetVLADPooling

    tiny = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"8x8 input gives a 0x0 conv grid, too small for patch size 5: .* 80 px"):
        speed_encoder.encode_tensor(tiny)
    descs = np.ones((20, 16), np.float32)  # every training descriptor the same
    for vladv2 in (False, True):
        with pytest.raises(ValueError, match="identical"):
            PatchNetVLADPooling(4, 16, vladv2=vladv2).init_params(np.eye(4, 16, dtype=np.float32), descs)
    image = [datasets_dir / "campus_loop_72" / "image_0.png"]
    with pytest.raises(ValueError, match="a WPCA needs at least 2"):
        build_offtheshelf_checkpoint(vgg16_weights, image, tmp_path / "x.pth.tar", num_clusters=4, num_pcs=8,
                                     patch_sizes=(), strides=(), image_size=(64, 64), progress=False, kmeans_iterations=2)
    images = [datasets_dir / "campus_loop_72" / f"image_{i}.png" for i in (0, 30)]
    with torch.no_grad():
        feats = [speed_encoder.backbone(speed_encoder.preprocess([load_rgb(p)])[..., : 160 + 16 * i]).float()
                 for i, p in enumerate(images)]
    with pytest.raises(ValueError, match="different sizes"):
        vlad_samples(speed_encoder.pooling, zip(images, feats), len(images), "cpu", 10**6, np.random.default_rng(0), False)
