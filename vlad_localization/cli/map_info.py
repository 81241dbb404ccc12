"""`vlad-localization map-info`: a map's manifest and statistics."""
from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
Shows the model the map was built with (backbone, clusters, PCs, patch sizes, input size and the
checkpoint's sha256: query it with that checkpoint and config; the official checkpoint it is, when
its sha256 is a known one, and the presets whose model matches the map's), the index, keyframe counts, stamps,
storage per file and the runs it was built from. --verify first reads every byte of every file
and checks it against the sha256 recorded in the manifest (exit code 1 naming each damaged file).

Examples:
  vlad-localization map-info maps/run1
  vlad-localization map-info --verify maps/run1
  vlad-localization map-info --json maps/run1 > run1_info.json
"""


def add_parser(sub) -> None:
    p = sub.add_parser("map-info", help="print a map's manifest and statistics",
                       description="Print a map's manifest and statistics.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("map", help="map directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true",
                   help="check every byte against the manifest's sha256 (exit 1 naming the damaged files)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlad_localization.mapdb import MapDatabase, MapIntegrityError, verify_map

    verified = None
    if args.verify:
        try:
            verified = verify_map(args.map)
        except MapIntegrityError as exc:
            for name, problem in exc.damaged.items():
                print(f"DAMAGED {exc.path / name}: {problem}", file=sys.stderr)
            print(f"error: map {exc.path} failed verification ({len(exc.damaged)} damaged file(s)); "
                  "rebuild it or restore it from a copy", file=sys.stderr)
            return 1
    with MapDatabase.open(args.map) as db:
        info = {"path": str(db.path), "manifest": db.manifest.to_dict(), "stats": db.stats()}
    info.update(model_provenance(info["manifest"]["model"]))
    if verified is not None:
        info["verified"] = verified
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    m, s = info["manifest"], info["stats"]
    if verified:
        print(f"verified: {len(verified)} files, {sum(verified.values()) / 1e6:.2f} MB, every byte matches "
              "the manifest's sha256")
    elif verified is not None:
        print(f"verified: sizes and structure only: a format version {m['version']} map records no checksums "
              "(a rebuild, `build-map --append` or `merge-maps` records them)")
    model = m["model"]
    print(f"map {info['path']}  (format {m['format']} v{m['version']}, created {m['created']}, updated {m['updated']})")
    print(f"  model     {model['backbone']} K={model['num_clusters']} PCs={model['num_pcs']} vladv2={model['vladv2']} "
          f"patches={model['patch_sizes']} strides={model['strides']} input={model['image_height']}x{model['image_width']}")
    known = f" (known checkpoint {info['known_checkpoint']})" if info["known_checkpoint"] else ""
    print(f"            checkpoint sha256 {model['checkpoint_sha256']}{known}")
    fits = ", ".join(info["fits_presets"]) or "none: query with the config it was built with"
    print(f"            fits preset(s) {fits}")
    print(f"  index     {m['index']['spec']} (as {m['index']['effective']}, nprobe {m['index']['nprobe']}, "
          f"efSearch {m['index']['ef_search']}), {m['dim']}-d inner product")
    print(f"  keyframes {m['keyframes']} ({s['with_pose']} with pose, {s['thumbnails']} thumbnails) "
          f"from {len(m['runs'])} run(s), {s['distinct_sources']} source(s)")
    if s["first_stamp_ns"] is not None:
        from vlad_localization.images.frames import seconds

        print(f"  stamps    {seconds(s['first_stamp_ns']):.3f} .. {seconds(s['last_stamp_ns']):.3f} s")
    v = s["views"]
    if v:
        per = (v["image_bytes"] + v["depth_bytes"]) / max(v["cameras"], 1) / 1e3
        print(f"  views     {v['cameras']} keyframes with a camera model, {v['images']} with their image "
              f"({v['image_bytes'] / 1e6:.2f} MB JPEG), {v['depth']} with depth ({v['depth_bytes'] / 1e6:.2f} MB PNG); "
              f"{per:.0f} kB per keyframe")
    else:
        why = ", built without a camera model" if m["version"] >= 3 else ""
        print(f"  views     none (format v{m['version']}{why}): closures are verified from the patch keypoints "
              "with the query's camera model")
    print(f"  patches   grid {m['grid']} input {m['image_size']}, per keyframe {s['patch_bytes_per_keyframe']} B float16 "
          f"= {100 * (s['patch_size_ratio_vs_reference'] or 0):.1f}% of the reference float32 .npy")
    print(f"  on disk   {s['total_bytes'] / 1e6:.2f} MB: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in s["files"].items()))
    for i, run in enumerate(m["runs"]):
        skipped = ", ".join(f"{k} {v}" for k, v in run["skipped"].items()) or "none skipped"
        print(f"  run {i}     ids {run['first_id']}..{run['first_id'] + run['keyframes'] - 1} ({run['created']}; "
              f"{skipped}): {'; '.join(run['sources'])}")
    return 0


def model_provenance(model: dict) -> dict:
    """``known_checkpoint``: the table name whose sha256 built the map (or None); ``fits_presets``:
    the presets whose model (backbone, PCs, patch sizes, strides, input size) is the map's."""
    from vlad_localization.model.known_checkpoints import load_table, presets_fitting

    sha = model.get("checkpoint_sha256")
    known = next((e.name for e in load_table().values() if sha and e.sha256 == sha), None)
    return {"known_checkpoint": known, "fits_presets": presets_fitting(model)}
