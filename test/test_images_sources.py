"""Frame sources: image folders with pose CSVs, and ROS 2 bags (.db3 / .mcap) written and read back."""
from __future__ import annotations

import logging
import math
import shutil

import numpy as np
import pytest

from vlad_localization.images import (
    BagError,
    Frame,
    Pose,
    PoseTrack,
    image_msg_to_rgb,
    iter_bag,
    iter_folder,
    list_image_topics,
    list_images,
    load_rgb,
    rgb_to_image_fields,
    write_bag,
)
from vlad_localization.images.bag import IMAGE, COMPRESSED, POSE_STAMPED, typestore
from vlad_localization.images.frames import FrameSource

S = 1_000_000_000


@pytest.fixture(scope="module")
def day_frames(datasets_dir) -> list[Frame]:
    """Four real colour images (Gardens Point, day) at 10 Hz from t=100 s, no poses."""
    paths = sorted((datasets_dir / "gardenspoint_10" / "query").glob("*.jpg"))[:4]
    return [Frame(stamp_ns=100 * S + i * S // 10, frame_id="cam", source=str(p), image=load_rgb(p))
            for i, p in enumerate(paths)]


def assert_pose_close(a: Pose, b: Pose, tol=1e-9):
    assert np.allclose(a.position, b.position, atol=tol)
    # q and -q are the same rotation
    assert min(np.abs(np.subtract(a.orientation, b.orientation)).max(),
               np.abs(np.add(a.orientation, b.orientation)).max()) < tol


# --- folders -------------------------------------------------------------------------------------

def test_campus_folder_with_headerless_xy_yaw_csv(datasets_dir):
    folder = datasets_dir / "campus_loop_72"
    source = iter_folder(folder, folder / "data.csv")
    assert isinstance(source, FrameSource) and source.origin == str(folder.absolute()) and not source.camera_models
    assert source.expected() == 72 and source.summary() == "72 frames" and source.skipped == {}
    frames = list(source)
    assert [f.source.rsplit("/", 1)[1] for f in frames[:3]] == ["image_0.png", "image_1.png", "image_2.png"]
    assert len(frames) == 72 and frames[10].source.endswith("image_10.png")  # natural order
    assert [f.stamp_ns for f in frames[:3]] == [0, S, 2 * S]  # no stamps in the CSV: index seconds
    first = next(line for line in (folder / "data.csv").read_text().splitlines())
    _, x, y, yaw = first.split(",")
    assert frames[0].pose.position == (float(x), float(y), 0.0)
    assert math.isclose(frames[0].pose.yaw, float(yaw), abs_tol=1e-12)
    assert frames[0].frame_id == "campus_loop_72"
    rgb = frames[0].rgb
    assert rgb.shape == (240, 426, 3) and rgb.dtype == np.uint8


def test_folder_of_symlinked_images_keeps_its_poses(tmp_path, datasets_dir):
    campus = datasets_dir / "campus_loop_72"
    for i in range(3):
        (tmp_path / f"image_{i}.png").symlink_to(campus / f"image_{i}.png")
    frames = iter_folder(tmp_path, campus / "data.csv")
    assert [f.pose is not None for f in frames] == [True, True, True]
    assert frames[2].source == str(tmp_path / "image_2.png")


def test_hidden_files_and_folders_are_not_images_and_ties_sort_by_name(tmp_path, datasets_dir):
    src = datasets_dir / "gardenspoint_10" / "ref" / "0.jpg"
    for name in ("img_1.png", "img_01.png", "img_10.png", "img_2.png", ".hidden.png", "._img_3.png"):
        shutil.copy(src, tmp_path / name)
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["img_01.png", "img_1.png", "img_2.png", "img_10.png"]


def test_folder_without_csv_and_lazy_loading(datasets_dir):
    frames = list(iter_folder(datasets_dir / "gardenspoint_10" / "ref"))
    assert len(frames) == 10 and all(f.pose is None and f.image is None for f in frames)
    assert frames[3].rgb.shape == (360, 640, 3) and frames[3].image is not None


def test_csv_with_header_stamps_quaternions_and_paths_relative_to_csv(tmp_path, datasets_dir):
    src = sorted((datasets_dir / "gardenspoint_10" / "ref").glob("*.jpg"))[:3]
    for sub in ("ref", "query"):
        (tmp_path / sub).mkdir()
        for p in src:
            shutil.copy(p, tmp_path / sub / p.name)
    q = (0.0, 0.0, math.sin(0.25), math.cos(0.25))
    lines = ["# a comment", "file,stamp_ns,x,y,z,qx,qy,qz,qw,extra"]
    for sub, t0 in (("ref", 0), ("query", 120)):
        lines += [f"{sub}/{p.name},{(t0 + i) * S + 7},{i},{2 * i},0.5,{','.join(map(str, q))},z"
                  for i, p in enumerate(src)]
    (tmp_path / "poses.csv").write_text("\n".join(lines) + "\n")
    query = list(iter_folder(tmp_path / "query", tmp_path / "poses.csv"))
    assert [f.stamp_ns for f in query] == [120 * S + 7, 121 * S + 7, 122 * S + 7]
    assert query[2].pose == Pose((2.0, 4.0, 0.5), q)
    (tmp_path / "ref" / "poses2.csv").write_text("name,stamp,x,y,yaw\n" + "".join(
        f"{p.name},{1.5 * i},{i},0,{0.1 * i}\n" for i, p in enumerate(src)))
    ref = list(iter_folder(tmp_path / "ref", tmp_path / "ref" / "poses2.csv"))
    assert [f.stamp_ns for f in ref] == [0, 1_500_000_000, 3_000_000_000]
    assert math.isclose(ref[2].pose.yaw, 0.2) and ref[2].pose.position == (2.0, 0.0, 0.0)


def test_csv_errors_are_actionable(tmp_path, datasets_dir):
    folder = datasets_dir / "gardenspoint_10" / "ref"
    bad = tmp_path / "bad.csv"
    bad.write_text("0.jpg,1,2\n")
    with pytest.raises(ValueError, match="headerless CSVs must be file,x,y,yaw"):
        list(iter_folder(folder, bad))
    bad.write_text("file,x,y\nmissing.jpg,1,2\n")
    with pytest.raises(ValueError, match=r"line 2 .*'missing.jpg' is neither in"):
        list(iter_folder(folder, bad))
    bad.write_text("# poses\n\nfile,x,y,yaw\n0.jpg,1,2,0\n1.jpg,1\n")  # the file's line, comments counted
    with pytest.raises(ValueError, match=r"line 5 \(1.jpg,1\): a pose needs both x and y \(this row gives only x\)"):
        list(iter_folder(folder, bad))
    bad.write_text("file,x,y,yaw\n0.jpg,1,,0.5\n")
    with pytest.raises(ValueError, match="needs both x and y"):
        list(iter_folder(folder, bad))
    bad.write_text("file,x,y,yaw\n0.jpg,nan,inf,0\n")
    with pytest.raises(ValueError, match="finite"):
        list(iter_folder(folder, bad))
    bad.write_text("file,stamp\n" + "".join(f"{i}.jpg,{'' if i == 2 else i}\n" for i in range(10)))
    with pytest.raises(ValueError, match=r"has stamps but not for 1 image\(s\) \(e.g. \['2.jpg'\]\)"):
        list(iter_folder(folder, bad))
    bad.write_text("file,stamp\n0.jpg,1.0\n")
    with pytest.raises(ValueError, match="has stamps but does not list 9 image"):
        list(iter_folder(folder, bad))
    with pytest.raises(FileNotFoundError):
        list(iter_folder(folder, tmp_path / "nope.csv"))
    with pytest.raises(FileNotFoundError):
        list(iter_folder(tmp_path / "nope"))


# --- poses ---------------------------------------------------------------------------------------

def test_pose_track_interpolates_linearly_and_slerps():
    track = PoseTrack([(2 * S, Pose.from_xy_yaw(2, 0, 1.0)), (0, Pose.from_xy_yaw(0, 0, 0.0))])
    mid = track.at(S // 2)
    assert_pose_close(mid, Pose.from_xy_yaw(0.5, 0, 0.25))
    assert track.at(2 * S) == Pose.from_xy_yaw(2, 0, 1.0)
    assert track.at(-1) is None and track.at(2 * S + 1) is None and PoseTrack([]).at(0) is None
    # across +-pi the short way round
    wrap = PoseTrack([(0, Pose.from_xy_yaw(0, 0, 3.0)), (S, Pose.from_xy_yaw(0, 0, -3.0))])
    assert math.isclose(abs(wrap.at(S // 2).yaw), math.pi, abs_tol=1e-9)


# --- bags ----------------------------------------------------------------------------------------

CASES = [("rgb8", False), ("bgr8", False), ("mono8", False), ("rgb8", True)]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("encoding,compressed", CASES)
def test_bag_round_trip_with_interpolated_odometry(tmp_path, day_frames, storage, encoding, compressed):
    # odometry at 20 Hz from 100.025 s: frame 0 (100.0 s) is before it, the others interpolate
    poses = [(100 * S + S // 40 + k * S // 20, Pose.from_xy_yaw(k, -k, 0.1 * k)) for k in range(7)]
    topic = "/cam/image_raw/compressed" if compressed else "/cam/image_raw"
    bag = write_bag(tmp_path / "bag", day_frames, topic, compressed=compressed, encoding=encoding,
                    pose_topic="/odom", poses=poses, storage=storage)
    assert (bag / "metadata.yaml").is_file()
    assert list(bag.glob("*.mcap" if storage == "mcap" else "*.db3"))
    assert list_image_topics(bag) == {topic: COMPRESSED if compressed else IMAGE}
    src = iter_bag(bag, topic, pose_topic="/odom")
    assert isinstance(src, FrameSource) and src.origin == f"{bag.absolute()}:{topic}" and not src.camera_models
    assert src.expected() == 4
    frames = list(src)
    assert src.skipped == {} and src.summary() == "4 frames"
    assert [f.stamp_ns for f in frames] == [f.stamp_ns for f in day_frames]
    assert all(f.frame_id == "cam" and f.source == f"{bag}:{topic}" for f in frames)
    assert frames[0].pose is None
    for i in (1, 2, 3):  # frame i at 100 + i/10 s lies half-way between odometry 2i-1 and 2i
        k = 2 * i - 0.5
        assert_pose_close(frames[i].pose, Pose.from_xy_yaw(k, -k, 0.1 * k))
    for got, want in zip(frames, day_frames):
        expected = want.rgb if encoding != "mono8" else image_msg_to_rgb(
            type("M", (), rgb_to_image_fields(want.rgb, "mono8"))())
        err = np.abs(got.rgb.astype(int) - expected).mean()
        assert err < 3 if compressed else err == 0


def test_bag_depth_topic_pairs_each_frame_with_its_depth(tmp_path, day_frames):
    """16UC1 and 32FC1 depth read back on their frames (a half-size one scaled up); a frame without
    depth or with a depth of another shape keeps none, counted."""
    height, width = day_frames[0].rgb.shape[:2]
    depths = [np.full((height, width), 1500, np.uint16), np.full((height // 2, width // 2), 2.5, np.float32),
              None, np.ones((7, 7), np.uint16)]
    frames = [Frame(f.stamp_ns, f.frame_id, f.source, image=f.rgb, depth=d) for f, d in zip(day_frames, depths)]
    bag = write_bag(tmp_path / "bag", frames, "/cam/image_raw", depth_topic="/cam/depth")
    src = iter_bag(bag, "/cam/image_raw", depth_topic="/cam/depth")
    got = list(src)
    assert [f.stamp_ns for f in got] == [f.stamp_ns for f in day_frames]
    assert got[0].depth.dtype == np.uint16 and np.all(got[0].depth == 1500)
    assert got[1].depth.shape == (height, width) and np.all(got[1].depth == 2.5)
    assert got[2].depth is None and got[3].depth is None
    assert src.summary() == "4 frames; depth: matched 2, size_mismatch 1, unmatched 1"
    assert all(f.depth is None for f in iter_bag(bag, "/cam/image_raw"))
    with pytest.raises(BagError, match="'/nope' is not in bag"):
        iter_bag(bag, "/cam/image_raw", depth_topic="/nope")


def test_frame_poses_pose_stamped_and_bare_storage_files(tmp_path, day_frames):
    frames = [Frame(f.stamp_ns, f.frame_id, f.source, Pose((i, 0.0, 1.0), (0.0, 0.0, 0.0, 1.0)), f.rgb)
              for i, f in enumerate(day_frames)]
    bag = write_bag(tmp_path / "bag", frames, "/img", pose_topic="/pose", pose_type=POSE_STAMPED, storage="sqlite3")
    (tmp_path / "bare").mkdir()
    db3 = shutil.copy(next(bag.glob("*.db3")), tmp_path / "bare")  # a .db3 without its metadata.yaml
    for path in (bag, db3):
        got = list(iter_bag(path, "/img", "/pose"))
        assert [f.pose for f in got] == [f.pose for f in frames]


def test_plain_arrays_are_stamped_by_index(tmp_path, day_frames):
    bag = write_bag(tmp_path / "b", [f.rgb[:50, :60] for f in day_frames[:2]], encoding="bayer_rggb8")
    got = list(iter_bag(bag, "/camera/image_raw"))
    assert [f.stamp_ns for f in got] == [0, S] and got[0].rgb.shape == (50, 60, 3)


def test_missing_bag_and_topics_are_clear_errors(tmp_path, day_frames):
    bag = write_bag(tmp_path / "bag", day_frames[:1], "/cam", pose_topic="/odom", poses=[(0, Pose())])
    available = r"available topics: /cam \(sensor_msgs/msg/Image\), /odom \(nav_msgs/msg/Odometry\)"
    with pytest.raises(BagError, match=r"topic '/camera' is not in bag .*" + available):
        iter_bag(bag, "/camera")
    with pytest.raises(BagError, match="topic '/odom' has type nav_msgs/msg/Odometry, expected one of sensor_msgs"):
        iter_bag(bag, "/odom")
    with pytest.raises(BagError, match="topic '/gps' is not in bag"):
        iter_bag(bag, "/cam", pose_topic="/gps")
    with pytest.raises(BagError, match="does not exist"):
        iter_bag(tmp_path / "nope", "/cam")
    with pytest.raises(FileExistsError):
        write_bag(bag, day_frames[:1])


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_damaged_and_unrecognised_bags_raise_bag_errors(tmp_path, day_frames, storage):
    """8 bytes overwritten anywhere in a bag: it reads, or a BagError names it (never another
    exception type, which the CLI would show as a traceback). A file that is no bag: a BagError."""
    small = [Frame(f.stamp_ns, f.frame_id, f.source, f.pose, f.rgb[:24, :32]) for f in day_frames]
    good = next(write_bag(tmp_path / "bag", small, "/cam", storage=storage).glob("*.[dm][bc][3a]*"))
    original = good.read_bytes()
    outcomes = set()
    for offset in range(0, len(original), max(1, len(original) // 120)):
        damaged = bytearray(original)
        damaged[offset : offset + 8] = b"\xff" * 8
        good.write_bytes(bytes(damaged))
        try:
            outcomes.add(len(list(iter_bag(good.parent, "/cam"))))
        except BagError:
            outcomes.add("BagError")
    assert "BagError" in outcomes and len(small) in outcomes  # most bytes are image data
    (tmp_path / "notes.txt").write_text("not a bag")
    with pytest.raises(BagError, match="cannot read bag .*notes.txt"):
        iter_bag(tmp_path / "notes.txt", "/cam")


def test_bad_frames_are_skipped_and_counted(tmp_path, day_frames, caplog):
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = typestore()
    T = store.types
    good = rgb_to_image_fields(day_frames[0].rgb[:40, :50])

    def header(i):
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=i, nanosec=0), frame_id="c")

    raws = [
        good,
        {**good, "data": good["data"][:100]},
        {**good, "encoding": "yuv422"},
        {**good, "width": 8000, "height": 6000, "step": 24000},
        good,
    ]
    bag = tmp_path / "bag"
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as w:
        raw_conn = w.add_connection("/raw", IMAGE, typestore=store)
        jpg_conn = w.add_connection("/jpg", COMPRESSED, typestore=store)
        for i, fields in enumerate(raws):
            msg = T[IMAGE](header=header(i + 1), **{**fields, "data": np.frombuffer(fields["data"], np.uint8)})
            w.write(raw_conn, (i + 1) * S, store.serialize_cdr(msg, IMAGE))
        for i, data in enumerate([b"garbage", b"\xff\xd8\xff\xe0 truncated"]):
            msg = T[COMPRESSED](header=header(i + 1), format="jpeg", data=np.frombuffer(data, np.uint8))
            w.write(jpg_conn, (i + 1) * S, store.serialize_cdr(msg, COMPRESSED))
    src = iter_bag(bag, "/raw")
    with caplog.at_level(logging.WARNING):
        frames = list(src)
    assert [f.stamp_ns for f in frames] == [S, 5 * S]
    assert src.skipped == {"data_too_short": 1, "unknown_encoding": 1, "too_large": 1}
    assert src.summary() == "2 frames, skipped 3 (data_too_short: 1, too_large: 1, unknown_encoding: 1)"
    assert "skipping a frame of" in caplog.text and "yuv422" in caplog.text
    jpg = iter_bag(bag, "/jpg")
    assert list(jpg) == [] and jpg.skipped == {"decode_failed": 2}
    assert list_image_topics(bag) == {"/jpg": COMPRESSED, "/raw": IMAGE}
