"""`vlad-localization train`: fine-tune a checkpoint on your own runs (the work is in
:mod:`vlad_localization.training`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vlad_localization.choices import TRAIN_LAYERS, WHITENING
from vlad_localization.cli.common import add_config_args, count_int, load_cli_config, positive_int
from vlad_localization.cli.main import UserError

EPILOG = """\
Runs (give two or more traversals of the same places, or one run that revisits them; every frame
needs a pose):
  --images DIR --poses CSV      an image folder and its poses (CSV layouts: build-map --help);
                                repeat both, in the same order, for several runs
  --bag BAG                     a bag; --image-topic and --pose-topic (odometry/pose) apply to all
  --map DIR                     a map built with poses (its keyframes' images)

Same place: positions within --positive-m (and headings within --positive-deg); different places:
beyond --negative-m; frames of one run less than --min-gap-s apart are never positives.
Validation: --val-fraction of the places (cells of 2 x --negative-m), never seen in training.

Method: NetVLAD's triplet margin loss on the global descriptor with hard negatives mined by the
current model every epoch; backbone frozen (conv features computed once; a CPU is enough) unless
--train-layers. Then the WPCA is learned (--whitening learned): the whitening of the pairs of one
place, which removes what changes within a place (season, light) and doubles recall across
seasons on unseen places where the triplet loss alone gains x1.4 (Nordland: benchmarks/RESULTS.md);
its two settings are chosen on the validation places (one-standard-error rule). The epoch with the
best validation recall@1 (or the starting layer, when its whitening validates better) is written
to --out (official checkpoint format: every command and the node load it). --epochs 0 only learns
the whitening. Each epoch is saved to OUT.train/last.pth.tar (--resume continues from it) and the
report (recall@1/5/10 before, every epoch, after) to OUT.train/report.json.

Calibration (unless --no-calibrate): the written checkpoint is calibrated on the validation places
as `calibrate` does with runs (every validation frame a query against the others; fused model
refitted, the lowest threshold reaching --precision): OUT.yaml (trained.pth.tar -> trained.yaml),
the --config with matching.fusion_model and loop_closure.score_threshold, for every command and the
node, and the recall it keeps is printed. The checkpoint's scores differ from those the presets'
threshold was fitted on, so use this config with it (or `calibrate` on more revisits: the validation
places also chose the best epoch, and few places give a coarse threshold).

Example:
  vlad-localization init-model --backbone-weights vgg16_imagenet_conv5_3.pth --images run1/ \\
      --num-clusters 16 --num-pcs 128 --out base.pth.tar
  vlad-localization train --checkpoint base.pth.tar --images run1/ --poses run1.csv \\
      --images run2/ --poses run2.csv --epochs 0 --out trained.pth.tar     # whitening only, minutes
  vlad-localization build-map --checkpoint trained.pth.tar --config trained.yaml --images run1/ ...
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a checkpoint on your own runs (poses give the places)",
                       description="Fine-tune the NetVLAD layer (and optionally the backbone's last block) of a\n"
                                   "Patch-NetVLAD checkpoint on your runs and learn its whitening, validated on\n"
                                   "held-out places.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint to start from: official, init-model's or an earlier train output")
    p.add_argument("--out", required=True, type=Path, help="trained checkpoint to write (.pth.tar)")
    add_run_args(p.add_argument_group("runs (repeatable)"))
    pl = p.add_argument_group("places")
    add_place_args(pl)
    pl.add_argument("--val-fraction", type=float, default=0.2, help="places held out for validation (default 0.2)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=count_int, default=10,
                   help="epochs of the triplet loss (default 10; 0: only learn the whitening, minutes on a CPU)")
    t.add_argument("--batch-size", type=positive_int, default=16, help="queries per step (default 16)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--negatives", type=positive_int, default=10, help="hard negatives per query (default 10)")
    t.add_argument("--train-layers", default="none", choices=tuple(TRAIN_LAYERS),
                   help="; ".join(f"{k}: {v}" for k, v in TRAIN_LAYERS.items()))
    t.add_argument("--num-pcs", type=positive_int, help="WPCA dimension (default: the checkpoint's)")
    t.add_argument("--whitening", default="learned", choices=tuple(WHITENING),
                   help="the WPCA written: " + "; ".join(f"{k}: {v}" for k, v in WHITENING.items()))
    t.add_argument("--seed", type=int, default=0, help="seed of the split, sampling and mining (default 0)")
    t.add_argument("--resume", action="store_true", help="continue from OUT.train/last.pth.tar")
    t.add_argument("--json", type=Path, metavar="OUT.json", help="report (default OUT.train/report.json)")
    c = p.add_argument_group("calibration at the end (on the validation places)")
    c.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="do not calibrate (default: write OUT.yaml, the --config with the fused model and "
                        "loop_closure.score_threshold refitted for --precision, as `calibrate` does)")
    c.add_argument("--precision", type=float, default=0.99, help="precision the threshold reaches (default 0.99)")
    add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def add_run_args(g) -> None:
    """The run options (``--images/--poses``, ``--bag``, ``--map``) of ``train`` and ``calibrate``; read by :func:`read_runs`."""
    g.add_argument("--images", action="append", default=[], metavar="DIR", help="image folder of one run")
    g.add_argument("--poses", action="append", default=[], metavar="CSV", help="poses of the --images run")
    g.add_argument("--bag", action="append", default=[], help="ROS 2 bag of one run")
    g.add_argument("--image-topic", help="--bag image topic")
    g.add_argument("--pose-topic", help="--bag odometry/pose topic (nav_msgs/Odometry or PoseStamped)")
    g.add_argument("--map", action="append", default=[], metavar="DIR", help="map built with poses")
    g.add_argument("--fps", type=float, default=1.0,
                   help="--images without CSV stamps: frame i is stamped i / FPS s (default 1)")


def add_place_args(g, negatives: bool = True) -> None:
    """When two frames show the same place (``train``, ``calibrate``); :func:`place_criteria` reads them."""
    g.add_argument("--positive-m", type=float, default=10.0, help="same place within M metres (default 10)")
    if negatives:
        g.add_argument("--negative-m", type=float, default=25.0,
                       help="different place beyond M metres (default 25)")
    g.add_argument("--positive-deg", type=float, help="same place also needs headings within DEG (default: any)")
    g.add_argument("--min-gap-s", type=float, default=30.0,
                   help="frames of one run closer in time are never positives (default 30 s)")


def place_criteria(args):
    """The :class:`~vlad_localization.training.PlaceCriteria` of :func:`add_place_args`' options, checked."""
    from vlad_localization.training import PlaceCriteria, TrainingDataError

    try:
        return PlaceCriteria(args.positive_m, getattr(args, "negative_m", args.positive_m), args.positive_deg,
                             args.min_gap_s).check()
    except TrainingDataError as exc:
        raise UserError(str(exc)) from None


def read_runs(args) -> list:
    """The runs named by ``--images/--poses``, ``--bag`` and ``--map``."""
    from vlad_localization.training import bag_run, folder_run, map_run

    if len(args.poses) != len(args.images):
        raise UserError(f"{len(args.images)} --images but {len(args.poses)} --poses: give one --poses CSV per "
                        "--images folder, in the same order")
    if args.bag and not args.image_topic:
        raise UserError("--bag needs --image-topic (and --pose-topic for the poses)")
    runs = [folder_run(d, c, args.fps) for d, c in zip(args.images, args.poses)]
    runs += [bag_run(b, args.image_topic, args.pose_topic) for b in args.bag]
    runs += [map_run(m) for m in args.map]
    if not runs:
        raise UserError("no runs: give --images DIR --poses CSV, --bag BAG or --map DIR (two traversals of the "
                        "same places, or one that revisits them)")
    return runs


def run(args) -> int:
    from vlad_localization.calibration import CalibrationRequest
    from vlad_localization.model.checkpoint import CheckpointError
    from vlad_localization.training import TrainingDataError, TrainOptions, train

    cfg = load_cli_config(args)
    if not 0 < args.precision <= 1:
        raise UserError(f"--precision must be in (0, 1], got {args.precision}")
    calibration = CalibrationRequest(cfg, args.config, args.precision) if args.calibrate else None
    criteria = place_criteria(args)
    options = TrainOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, num_negatives=args.negatives,
                           val_fraction=args.val_fraction, train_layers=args.train_layers, seed=args.seed,
                           num_pcs=args.num_pcs, whitening=args.whitening)
    try:
        train(args.checkpoint, read_runs(args), args.out, cfg.model, criteria, options,
              device=args.device or cfg.model.device, resume=args.resume, progress=not args.no_progress,
              report_path=args.json, calibration=calibration)
    except (TrainingDataError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    return 0
