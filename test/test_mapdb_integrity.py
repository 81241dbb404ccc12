"""Map integrity: every file's sha256 in the manifest (written last), a bit flip anywhere found by
``verify_map`` / ``MapDatabase.verify`` / ``map-info --verify`` and the file named; sizes on open;
version 1 maps (no checksums) still open. Synthetic maps (test_mapdb_storage's fake encoder)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_mapdb_storage import build  # synthetic maps through build_map (fast, no model)
from vlad_localization.cli.main import main
from vlad_localization.mapdb import MapDatabase, MapError, MapIntegrityError, merge_maps, verify_map
from vlad_localization.mapdb.integrity import file_sha256

DATA_FILES = ["global.faiss", "global.f32", "patches_p5.f16", "keyframes.sqlite", "views.sqlite"]


@pytest.fixture
def map_dir(tmp_path):
    path = tmp_path / "map"
    build(path, 8)
    return path


def flip_bit(path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


def manifest_of(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_manifest_records_every_file_with_its_sha256(map_dir):
    m = manifest_of(map_dir)
    assert m["version"] == 3 and sorted(m["files"]) == sorted(DATA_FILES)
    assert m["views"] == {"cameras": 8, "images": 8, "depth": 0}
    for name, entry in m["files"].items():
        assert entry == {"bytes": (map_dir / name).stat().st_size, "sha256": file_sha256(map_dir / name)}
    assert verify_map(map_dir) == {name: e["bytes"] for name, e in m["files"].items()}


@pytest.mark.parametrize("name", DATA_FILES)
@pytest.mark.parametrize("where", ["first", "middle", "last", "random"])
def test_a_bit_flip_anywhere_is_found_and_the_file_named(map_dir, name, where, capsys):
    size = (map_dir / name).stat().st_size
    rng = np.random.default_rng(sum(map(ord, name)))
    offset = {"first": 0, "middle": size // 2, "last": size - 1, "random": int(rng.integers(size))}[where]
    flip_bit(map_dir / name, offset, bit=int(rng.integers(8)))
    with pytest.raises(MapIntegrityError) as err:
        verify_map(map_dir)
    assert list(err.value.damaged) == [name] and "sha256" in err.value.damaged[name]
    assert main(["map-info", "--verify", str(map_dir)]) == 1
    stderr = capsys.readouterr().err
    assert f"DAMAGED {map_dir / name}: sha256" in stderr and sum(f in stderr for f in DATA_FILES) == 1


@pytest.mark.parametrize("seed", range(6))
def test_a_bit_flip_anywhere_in_the_manifest_is_found(map_dir, seed, capsys):
    """The manifest holds a checksum of its own content: a flip that keeps the JSON readable (a
    digit of a sha256, a count) is found too, and named as the manifest's damage."""
    text = (map_dir / "manifest.json").read_bytes()
    if seed == 0:  # inside the first recorded sha256: still valid JSON and hex
        offset = text.index(b'"sha256": "') + 11
        offset += next(i for i, c in enumerate(text[offset:]) if c in b"0123456789bcde")
    else:
        offset = int(np.random.default_rng(seed).integers(len(text)))
    flip_bit(map_dir / "manifest.json", offset)
    with pytest.raises(MapIntegrityError) as err:
        verify_map(map_dir)
    assert "manifest.json" in err.value.damaged
    assert main(["map-info", "--verify", str(map_dir)]) == 1
    assert "DAMAGED" in capsys.readouterr().err


def test_open_checks_sizes_cheaply_and_verify_reads_every_byte(map_dir):
    flip_bit(map_dir / "global.f32", 5)  # same size: the cheap check on open lets it through
    with MapDatabase.open(map_dir) as db:
        with pytest.raises(MapIntegrityError, match=r"global\.f32: sha256"):
            db.verify()
    with open(map_dir / "keyframes.sqlite", "ab") as f:  # a size change is refused on open
        f.write(b"\0")
    with pytest.raises(MapIntegrityError, match=r"keyframes\.sqlite: \d+ bytes, the manifest says \d+"):
        MapDatabase.open(map_dir)


def test_every_damaged_file_is_named(map_dir):
    for name in ("global.f32", "keyframes.sqlite"):
        flip_bit(map_dir / name, 100)
    (map_dir / "global.faiss").unlink()
    with pytest.raises(MapIntegrityError) as err:
        verify_map(map_dir)
    assert err.value.damaged.keys() == {"global.f32", "keyframes.sqlite", "global.faiss"}
    assert err.value.damaged["global.faiss"] == "missing"


def test_verify_cli_on_a_sound_map(map_dir, capsys):
    assert main(["map-info", "--verify", str(map_dir)]) == 0
    assert "verified: 5 files" in capsys.readouterr().out
    assert main(["map-info", "--verify", "--json", str(map_dir)]) == 0
    assert set(json.loads(capsys.readouterr().out)["verified"]) == set(DATA_FILES)


def as_old_version(path, version: int) -> None:
    """Rewrite a map as this package wrote it before keyframe views (format version 2: no
    ``views.sqlite``) or also before checksums (version 1)."""
    from vlad_localization.mapdb.manifest import content_sha256

    m = manifest_of(path)
    (path / "views.sqlite").unlink(missing_ok=True)
    m.pop("views", None)
    m.pop("checksum", None)
    m["files"].pop("views.sqlite", None)
    m["version"] = version
    if version == 1:
        del m["files"]
    else:
        m["checksum"] = content_sha256(m)
    (path / "manifest.json").write_text(json.dumps(m))


def as_version_1(path) -> None:
    as_old_version(path, 1)


def test_version_1_maps_open_verify_structure_only_and_gain_checksums_on_append(map_dir, capsys):
    as_version_1(map_dir)
    with MapDatabase.open(map_dir) as db:
        assert db.size == 8 and db.manifest.version == 1 and db.verify() == {}
    assert main(["map-info", "--verify", str(map_dir)]) == 0
    assert "records no checksums" in capsys.readouterr().out
    build(map_dir, 2, start=100, append=True)
    assert manifest_of(map_dir)["version"] == 3 and set(verify_map(map_dir)) == set(DATA_FILES)
    with MapDatabase.open(map_dir) as db:  # the old keyframes have no view, the appended ones have
        assert db.view(7) is None and db.view(8).image_hw == (48, 64)
        assert db.manifest.views == {"cameras": 2, "images": 2, "depth": 0}


def test_version_2_maps_open_without_views(map_dir):
    as_old_version(map_dir, 2)
    assert verify_map(map_dir).keys() == set(DATA_FILES) - {"views.sqlite"}
    with MapDatabase.open(map_dir) as db:
        assert db.manifest.version == 2 and db.manifest.views == {} and db.view(0) is None
        with pytest.raises(KeyError):
            db.view(8)


def test_a_version_2_manifest_without_checksums_is_refused(map_dir):
    m = manifest_of(map_dir)
    del m["files"]  # e.g. a damaged key: never silently skip the checks
    (map_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MapError, match="malformed manifest"):
        MapDatabase.open(map_dir)


def test_merged_and_appended_maps_record_their_new_checksums(tmp_path, map_dir):
    build(tmp_path / "b", 3, start=50)
    merge_maps(tmp_path / "merged", [map_dir, tmp_path / "b"])
    build(map_dir, 2, start=100, append=True)
    for path in (tmp_path / "merged", map_dir):
        assert set(verify_map(path)) == set(DATA_FILES)
