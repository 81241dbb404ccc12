"""Real-image descriptors shared by the matching tests (encoded once per test session).

Not a test module by itself: ``test_matching_parity`` and ``test_matching_real`` import it, so
the images are encoded only once even when both run.
"""
from __future__ import annotations

import functools
from pathlib import Path

from vlad_localization.config import load_config
from vlad_localization.images.io import load_rgb
from vlad_localization.model.descriptors import Descriptors
from vlad_localization.model.encoder import Encoder

IMAGE_HW = (240, 320)  # the speed_checkpoint fixture's input size: a 15 x 20 conv grid
PATCH_SIZES = (2, 5, 8)  # the performance preset's sizes
STRIDES = (1, 1, 1)
PERFORMANCE_WEIGHTS = (0.45, 0.15, 0.4)

GARDENS_DAY = [f"gardenspoint_10/query/{i}.jpg" for i in range(10)]
GARDENS_NIGHT = [f"gardenspoint_10/ref/{i}.jpg" for i in range(10)]
REVISITS = [  # (query, reference) showing the same place
    ("multiview_pairs/graf3.png", "multiview_pairs/graf1.png"),
    ("multiview_pairs/leuvenB.jpg", "multiview_pairs/leuvenA.jpg"),
    ("multiview_pairs/aloeR.jpg", "multiview_pairs/aloeL.jpg"),
    ("euroc_loop_pairs/left_img_1.png", "euroc_loop_pairs/left_img_0.png"),
    ("campus_loop_72/image_71.png", "campus_loop_72/image_0.png"),
]
TOKYO = ("tokyo_pair/query/tokyo_query.jpg", "tokyo_pair/ref/tokyo_db.png")
NAMES = GARDENS_DAY + GARDENS_NIGHT + [n for pair in REVISITS for n in pair] + list(TOKYO)


def multiscale_encoder(checkpoint: Path, image_hw=IMAGE_HW) -> Encoder:
    """A CPU encoder on the off-the-shelf checkpoint with patch sizes 2, 5, 8."""
    cfg = load_config("performance").model
    cfg.patch_sizes, cfg.strides = list(PATCH_SIZES), list(STRIDES)
    cfg.image_height, cfg.image_width = image_hw
    return Encoder.from_checkpoint(checkpoint, cfg, device="cpu")


@functools.lru_cache(maxsize=1)
def real_descriptors(checkpoint: Path, datasets_dir: Path) -> tuple[Encoder, Descriptors]:
    """(encoder, descriptors of ``NAMES`` in order) at 240 x 320 with patch sizes 2, 5, 8."""
    encoder = multiscale_encoder(checkpoint)
    return encoder, encoder.encode([load_rgb(datasets_dir / n) for n in NAMES])
