"""Side-by-side picture of matched patch keypoints (what the official ``match_two.py`` plots),
drawn with OpenCV only."""
from __future__ import annotations

import cv2
import numpy as np

from vlad_localization.model.preprocess import resize_rgb

MATCH_COLOUR = (0, 255, 0)  # RGB


def draw_matches(
    query_rgb: np.ndarray,
    ref_rgb: np.ndarray,
    query_kp: np.ndarray,
    ref_kp: np.ndarray,
    *,
    image_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Query (left) and reference (right) side by side with a line per matched keypoint pair.

    Keypoints are (M, 2) x, y in the network-input frame (e.g. ``MatchResult.matched_keypoints``);
    ``image_hw`` is that frame's (H, W): both images are resized to it first (None: the images
    already are in that frame). Returns an H x 2W x 3 RGB uint8 image.
    """
    query_kp = np.asarray(query_kp, dtype=np.float64).reshape(-1, 2)
    ref_kp = np.asarray(ref_kp, dtype=np.float64).reshape(-1, 2)
    if len(query_kp) != len(ref_kp):
        raise ValueError(f"{len(query_kp)} query keypoints but {len(ref_kp)} reference keypoints: they pair row by row")
    if image_hw is not None:
        query_rgb = resize_rgb(np.asarray(query_rgb), *image_hw)
        ref_rgb = resize_rgb(np.asarray(ref_rgb), *image_hw)
    if query_rgb.shape != ref_rgb.shape:
        raise ValueError(
            f"images of sizes {query_rgb.shape[:2]} and {ref_rgb.shape[:2]}: pass image_hw (the network "
            "input size the keypoints refer to)"
        )
    width = query_rgb.shape[1]
    canvas = np.ascontiguousarray(np.concatenate([query_rgb, ref_rgb], axis=1))
    radius = max(2, width // 160)
    for (qx, qy), (rx, ry) in zip(np.rint(query_kp).astype(int), np.rint(ref_kp).astype(int)):
        start, end = (int(qx), int(qy)), (int(rx) + width, int(ry))
        cv2.line(canvas, start, end, MATCH_COLOUR, 1, cv2.LINE_AA)
        cv2.circle(canvas, start, radius, MATCH_COLOUR, 1, cv2.LINE_AA)
        cv2.circle(canvas, end, radius, MATCH_COLOUR, 1, cv2.LINE_AA)
    return canvas
