"""``match --pose``: the two images' cameras and depth functions from the flags, then the verifier."""
from __future__ import annotations

from .main import UserError


def _camera(args, cfg, image_hw):
    from ..verification import PinholeCamera, load_euroc_sensor

    sensors = [load_euroc_sensor(p) for p in args.calibration or []]
    if len(sensors) > 2 or (sensors and args.intrinsics):
        raise UserError("give --intrinsics or --calibration LEFT.yaml[,RIGHT.yaml] (at most two files), not both")
    if sensors:
        calib_hw = sensors[0].image_hw
        scale = (image_hw[1] / calib_hw[1], image_hw[0] / calib_hw[0])
        return sensors[0].camera.scaled(*scale), sensors, scale
    if cfg.verification.intrinsics is None:
        raise UserError("--pose needs the camera intrinsics: --intrinsics fx,fy,cx,cy[,k1,k2,p1,p2], "
                        "--calibration sensor.yaml, or verification.intrinsics in the --config file")
    return PinholeCamera.from_list(cfg.verification.intrinsics), sensors, (1.0, 1.0)


def _stereo_rig(args, camera, sensors, scale):
    from ..verification import StereoRig

    if not (args.stereo_query or args.stereo_ref):
        if args.baseline is not None:
            raise UserError("--baseline applies only with --stereo-query / --stereo-ref")
        return None
    if len(sensors) == 2:
        return StereoRig.from_sensors(*sensors).scaled(*scale)
    if args.baseline is None:
        raise UserError("stereo needs --baseline B (rectified images) or --calibration LEFT.yaml,RIGHT.yaml")
    try:
        return StereoRig.from_baseline(camera, args.baseline)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def _depth_function(image, depth_path, right_path, rig, vcfg):
    """depth(points) for one view: from a registered depth image, a right stereo image, or None."""
    from ..images.io import load_rgb
    from ..verification import depth_at, stereo_depth_at
    from ..verification.depth import load_depth

    other = load_depth(depth_path) if depth_path else load_rgb(right_path) if right_path else None
    if other is None:
        return None
    if other.shape[:2] != image.shape[:2]:
        what = "depth image" if depth_path else "right stereo image"
        raise UserError(f"the {what} {depth_path or right_path} is {other.shape[1]}x{other.shape[0]}, its left "
                        f"image {image.shape[1]}x{image.shape[0]}: they must be registered pixel to pixel")
    if depth_path:
        return lambda points: depth_at(other, points, vcfg.depth_scale, vcfg.max_depth_m)
    return lambda points: stereo_depth_at(image, other, rig, points, vcfg.max_depth_m)


def pose_views(args, cfg, query_rgb, ref_rgb):
    """The two :class:`~vlad_localization.verification.View` s the flags describe (checked before
    anything is encoded, so a wrong flag fails at once)."""
    from ..verification import View

    if query_rgb.shape[:2] != ref_rgb.shape[:2]:
        raise UserError(f"--pose assumes one camera, but the images are {query_rgb.shape[1]}x{query_rgb.shape[0]} "
                        f"and {ref_rgb.shape[1]}x{ref_rgb.shape[0]}")
    camera, sensors, scale = _camera(args, cfg, query_rgb.shape[:2])
    rig = _stereo_rig(args, camera, sensors, scale)
    vcfg = cfg.verification
    query = View(camera, query_rgb.shape[:2], query_rgb,
                 _depth_function(query_rgb, args.depth_query, args.stereo_query, rig, vcfg))
    ref = View(camera, ref_rgb.shape[:2], ref_rgb, _depth_function(ref_rgb, args.depth_ref, args.stereo_ref, rig, vcfg))
    return query, ref
