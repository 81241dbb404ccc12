"""Keyframe views (mapdb.views): the depth encoding, the capture of a frame's view for build-map
(camera from the frame or the config, depth named like the image) and the table round trip."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from vlad_localization.config import Config
from vlad_localization.images.frames import Frame
from vlad_localization.mapdb.views import KeyframeView, ViewCapture, ViewTable, encode_depth
from vlad_localization.verification import PinholeCamera

CAMERA = PinholeCamera(100.0, 101.0, 32.0, 24.0, (-0.2, 0.05, 0.001, 0.0))


def rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def test_depth_is_stored_in_millimetres_with_unknown_as_zero():
    metres = np.full((48, 64), 2.5, np.float32)
    metres[0, 0], metres[0, 1], metres[0, 2], metres[0, 3] = np.nan, -1.0, 70.0, 0.0004
    view = KeyframeView(CAMERA, (48, 64), None, encode_depth(metres))
    mm = view.depth_image()
    assert mm.dtype == np.uint16 and mm[1, 1] == 2500 and list(mm[0, :4]) == [0, 0, 0, 0]
    raw = np.full((48, 64), 1234, np.uint16)  # integer input: depth_scale metres per unit
    assert KeyframeView(CAMERA, (48, 64), None, encode_depth(raw, 0.0001)).depth_image()[5, 5] == 123
    source = KeyframeView.capture(rgb(), CAMERA, metres).verification_view(max_depth_m=20.0).depth
    assert source(np.array([[10.0, 10.0]]))[0] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="registered pixel to pixel"):
        KeyframeView.capture(rgb(), CAMERA, np.ones((24, 32), np.float32))


def test_capture_takes_the_frames_camera_first_and_depth_by_name(tmp_path):
    depth_dir = tmp_path / "depth"
    depth_dir.mkdir()
    cv2.imwrite(str(depth_dir / "a.png"), np.full((48, 64), 1500, np.uint16))
    cfg = Config()
    cfg.verification.intrinsics = [90.0, 90.0, 32.0, 24.0]
    capture = ViewCapture.from_config(cfg, depth_dir)
    own = capture(Frame(0, source="/imgs/a.jpg", image=rgb(), camera=CAMERA))
    assert own.camera == CAMERA and own.depth_image()[0, 0] == 1500 and own.image is not None
    default = capture(Frame(1, source="/imgs/b.png", image=rgb(1)))
    assert default.camera == PinholeCamera.from_list([90, 90, 32, 24]) and default.depth is None
    assert dict(capture.counts) == {"views": 2, "depth": 1, "no_depth": 1}
    cfg.verification.intrinsics, cfg.map.store_views = None, False
    bare = ViewCapture.from_config(cfg)
    assert bare(Frame(2, image=rgb())) is None and bare.counts["no_camera"] == 1
    assert bare(Frame(3, image=rgb(), camera=CAMERA)) == KeyframeView(CAMERA, (48, 64))  # camera model only
    with pytest.raises(FileNotFoundError):
        ViewCapture(depth_dir=tmp_path / "missing")


def test_table_round_trip(tmp_path):
    smooth = np.dstack([*np.meshgrid(np.arange(64) * 3, np.arange(48) * 4), np.full((48, 64), 90)]).astype(np.uint8)
    views = {3: KeyframeView.capture(smooth, CAMERA, np.full((48, 64), 2.0)), 5: KeyframeView(CAMERA, (480, 640))}
    table = ViewTable(tmp_path / "views.sqlite", create=True)
    table.add(views.items())
    table.close()
    table = ViewTable(tmp_path / "views.sqlite")
    assert table.get(3) == views[3] and table.get(5) == views[5] and table.get(4) is None
    assert table.counts() == {"cameras": 2, "images": 1, "depth": 1}
    image = table.get(3).verification_view(20.0).image
    assert image.shape == (48, 64, 3) and np.abs(image.astype(int) - smooth).mean() < 2  # JPEG q95
