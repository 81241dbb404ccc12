"""Fine-tune a Patch-NetVLAD checkpoint on the user's runs (``vlad-localization train``).

NetVLAD's weakly supervised training (Arandjelovic et al., CVPR 2016): the triplet margin loss
``sum_n max(0, d(q, p) + m - d(q, n))`` on the L2-normalised global VLAD descriptor (before WPCA),
``m = sqrt(0.1)`` on the distance as the reference implementation, one best positive and up to 10
hard negatives per query (:mod:`.mining`), Adam. The backbone is frozen by default: its conv
features are computed once and cached, so an epoch costs only the NetVLAD layer (a CPU is enough);
``train_layers`` also trains its last block (a GPU is advised; fp16 autocast on CUDA).

The WPCA is learned at the end (``whitening="learned"``, the default; :mod:`.whitening`): the
whitening of the pairs of one place (Radenovic et al. 2018), fitted on the training frames with its
two settings chosen on the validation places. It doubles fused recall@1 on unseen Nordland places
where the triplet loss alone gained x1.4 (``benchmarks/RESULTS.md``). ``"pca"`` refits
``init-model``'s PCA-whitening instead (patch and global VLADs, no pairs). The epoch with the best
validation recall@1 is kept; with a learned whitening it competes with the starting layer (epoch 0)
whitened the same way, and the better on validation is written (official format).

Reproducible: the epoch's randomness comes from ``(seed, epoch)`` only and the hard-negative cache
is saved with the optimizer in ``<work>/last.pth.tar`` every epoch, so ``resume`` continues exactly
(bit-exact on one CPU setup).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from vlad_localization.choices import WHITENING, names
from vlad_localization.model.checkpoint import (
    CheckpointError, file_sha256, load_module_state, load_torch_file, read_checkpoint, save_checkpoint,
)
from vlad_localization.model.device import resolve_device
from vlad_localization.model.encoder import Encoder
from vlad_localization.model.init_model import vlad_samples, wpca_from_samples
from vlad_localization.model.wpca import WPCA

from .data import Run, TrainingDataError, TrainingFrames, split_by_place
from .features import cache_features, split_backbone
from .mining import PlaceCriteria, PlacePairs, Triplet, mine_triplets, place_pairs, recall_at_k, require_positives
from .whitening import Whitening, choose_whitening

log = logging.getLogger(__name__)
STATE_FILE = "last.pth.tar"
FEATURES_FILE = "features.pt"  # the trunk's conv features, kept for --resume
RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class TrainOptions:
    """How to train (defaults: the paper's margin and 10 negatives; Adam on the NetVLAD layer)."""

    epochs: int = 10
    batch_size: int = 16  # queries (triplet tuples) per step
    lr: float = 1e-3
    weight_decay: float = 1e-3
    margin: float = 0.1 ** 0.5
    num_negatives: int = 10
    negative_sample: int = 1000
    val_fraction: float = 0.2
    place_m: float | None = None  # size of a place cell for the split (default 2 * negative_m)
    train_layers: str = "none"
    whitening: str = "learned"  # choices.WHITENING
    seed: int = 0
    num_pcs: int | None = None  # WPCA dimension written (default: the starting checkpoint's)
    max_pca_samples: int = 5_000  # VLAD rows for the WPCA (fewer than K*C dims: the dual problem, fast)


@dataclass
class Model:
    """What is trained: the head (the backbone's last block or an identity) and the NetVLAD layer."""

    encoder: Encoder
    head: torch.nn.Module
    device: torch.device

    @property
    def pooling(self):
        return self.encoder.pooling

    def parameters(self):
        return [p for m in (self.head, self.pooling) for p in m.parameters()]

    def global_vlad(self, feats: torch.Tensor) -> torch.Tensor:
        """L2-normalised global VLAD (N, K*C) of cached trunk features (autocast fp16 on CUDA)."""
        with torch.autocast("cuda", torch.float16, enabled=self.device.type == "cuda"):
            x = self.head(feats.to(self.device).float())
        return self.pooling.global_descriptor(*self.pooling.soft_assignment(x.float()), None)

    def describe(self, feats: torch.Tensor, wpca: WPCA | None = None, batch: int = 64) -> np.ndarray:
        """Global descriptors of every row of ``feats``, without gradients (numpy, float32)."""
        out = []
        with torch.no_grad():
            for lo in range(0, len(feats), batch):
                d = self.global_vlad(feats[lo : lo + batch])
                out.append((d if wpca is None else wpca.to(self.device)(d)).float().cpu())
        return torch.cat(out).numpy()

    def state(self) -> dict:
        return {"head": copy.deepcopy(self.head.state_dict()), "pool": copy.deepcopy(self.pooling.state_dict())}

    def load(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.pooling.load_state_dict(state["pool"])


def triplet_loss(desc: torch.Tensor, rows: dict[int, int], triplets: Sequence[Triplet], margin: float) -> torch.Tensor:
    """Mean over all (query, negative) pairs of ``max(0, d(q, p) + margin - d(q, n))``; ``rows`` maps
    a frame index to its row of ``desc``."""
    q, p, n = [], [], []
    for t in triplets:
        for neg in t.negatives:
            q.append(rows[t.query])
            p.append(rows[t.positive])
            n.append(rows[int(neg)])
    q, p, n = (torch.tensor(v, dtype=torch.long, device=desc.device) for v in (q, p, n))
    d_pos = (desc[q] - desc[p]).norm(dim=1)
    d_neg = (desc[q] - desc[n]).norm(dim=1)
    return torch.relu(d_pos + margin - d_neg).mean()


@dataclass
class Split:
    """One side of the place split: its frames, pairs, query frames and cached features."""

    data: TrainingFrames
    pairs: PlacePairs
    queries: np.ndarray
    feats: torch.Tensor | None = None


def validation_metrics(model: Model, split: Split, criteria: PlaceCriteria, options: TrainOptions,
                       wpca: WPCA | None = None) -> dict:
    """Recall@1/5/10 over the validation places and the loss with each query's best positive and 10
    hardest negatives among all (deterministic)."""
    if split.feats is None or not len(split.queries):
        return {"recall": {str(k): None for k in RECALL_KS}, "loss": None}
    desc = model.describe(split.feats, wpca)
    recall = recall_at_k(desc, split.data, split.pairs, criteria, RECALL_KS)
    if wpca is not None:
        return {"recall": recall}
    triplets = mine_triplets(desc, split.pairs, split.queries, np.random.default_rng(0), options.num_negatives,
                             sample=0, margin=float("inf"))
    loss = triplet_loss(torch.from_numpy(desc), {i: i for i in range(len(desc))}, triplets, options.margin)
    return {"recall": recall, "loss": float(loss)}


def train(checkpoint: str | Path, runs: Sequence[Run], out: str | Path, model_cfg, criteria: PlaceCriteria,
          options: TrainOptions, device: str = "auto", resume: bool = False, progress: bool = True,
          echo: Callable[[str], None] = print, report_path: str | Path | None = None, calibration=None) -> dict:
    """Train, write the best epoch's checkpoint to ``out`` (WPCA refitted) and return the report
    (also written to ``report_path``, default ``<out>.train/report.json``). With ``calibration`` (a
    :class:`~vlad_localization.calibration.CalibrationRequest`), calibrate the written checkpoint on
    the validation places and write the config YAML beside it (:func:`_calibrate`)."""
    out = Path(out)
    work = out.with_name(out.name + ".train")
    report_path = Path(report_path) if report_path else work / "report.json"
    criteria.check()
    if options.whitening not in WHITENING:
        raise TrainingDataError(f"whitening {options.whitening!r}: use one of {names(WHITENING)}")
    dev = resolve_device(device)
    torch.manual_seed(options.seed)
    contents = read_checkpoint(checkpoint)
    if not contents.has_pooling:
        raise TrainingDataError(f"{checkpoint} holds only backbone weights: build a model to start from with "
                                "`vlad-localization init-model --backbone-weights ... --images ...` and train that")
    encoder = Encoder.from_checkpoint(contents.path, dataclasses.replace(model_cfg, half=False, num_pcs=model_cfg.num_pcs
                                                                        or contents.num_pcs), dev)
    trunk, head = split_backbone(encoder.backbone, contents.backbone, options.train_layers)
    model = Model(encoder, head, dev)
    start_wpca = encoder.wpca
    num_pcs = options.num_pcs or (None if start_wpca is None else start_wpca.num_pcs)

    data = TrainingFrames.from_runs(runs)
    train_idx, val_idx = split_by_place(data, options.val_fraction, options.place_m or 2 * criteria.negative_m,
                                        options.seed)
    splits = {}
    for name, idx in (("training", train_idx), ("validation", val_idx)):
        sub = data.subset(idx)
        pairs = place_pairs(sub, criteria)
        splits[name] = Split(sub, pairs, require_positives(pairs, criteria, name) if name == "training" else pairs.queries)
    train_split, val_split = splits["training"], splits["validation"]
    if options.val_fraction > 0 and not len(val_split.queries):
        log.warning("no validation place has a positive: recall is not measured (raise --val-fraction)")
    echo(f"{len(data)} frames of {len(runs)} run(s): {len(train_split.data)} training ({len(train_split.queries)} "
         f"with a positive), {len(val_split.data)} validation ({len(val_split.queries)} with a positive)")

    image_size = (encoder.cfg.image_height, encoder.cfg.image_width)
    fingerprint = {"checkpoint_sha256": file_sha256(contents.path), "frames": _frames_digest(data), "seed": options.seed,
                   "train_layers": options.train_layers, "criteria": dataclasses.asdict(criteria),
                   "batch_size": options.batch_size, "lr": options.lr, "image_size": list(image_size),
                   "split": [options.val_fraction, options.place_m]}
    saved_state = _read_state(work / STATE_FILE, fingerprint) if resume else None
    _cached_features(work / FEATURES_FILE, fingerprint, trunk, (train_split, val_split), image_size, dev, progress)
    params = model.parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=options.lr, weight_decay=options.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    hard_cache: dict[int, np.ndarray] = {}
    report = {"before": validation_metrics(model, val_split, criteria, options), "epochs": []}
    report["before"]["recall_wpca"] = validation_metrics(model, val_split, criteria, options, start_wpca)["recall"]
    start = {"epoch": 0, "key": _score(report["before"]), "state": model.state()}
    best, first = start, 1
    if saved_state is not None:
        first, best, hard_cache = _resume(saved_state, model, optimizer, report)
    _print_metrics(echo, "before", report["before"])

    for epoch in range(first, options.epochs + 1):
        t0 = time.perf_counter()
        rng = np.random.default_rng([options.seed, epoch])
        model.head.train(options.train_layers != "none")
        desc = model.describe(train_split.feats)  # the cache of the current model, refreshed every epoch
        triplets = mine_triplets(desc, train_split.pairs, train_split.queries, rng, options.num_negatives,
                                 options.negative_sample, options.margin, hard_cache)
        order = rng.permutation(len(triplets))
        losses = []
        bar = tqdm(range(0, len(order), options.batch_size), desc=f"epoch {epoch}/{options.epochs}", unit="batch",
                   disable=not progress)
        for lo in bar:
            batch = [triplets[i] for i in order[lo : lo + options.batch_size]]
            frames = sorted({i for t in batch for i in (t.query, t.positive, *t.negatives.tolist())})
            vlad = model.global_vlad(train_split.feats[frames])
            loss = triplet_loss(vlad, {f: r for r, f in enumerate(frames)}, batch, options.margin)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        model.head.eval()
        row = {"epoch": epoch, "triplets": len(triplets), "train_loss": float(np.mean(losses)) if losses else 0.0,
               **validation_metrics(model, val_split, criteria, options), "seconds": time.perf_counter() - t0}
        report["epochs"].append(row)
        if _score(row) > best["key"] or not len(val_split.queries):  # without validation: the last epoch
            best = {"epoch": epoch, "key": _score(row), "state": model.state()}
        _print_metrics(echo, f"epoch {epoch}", row)
        _save_state(work / STATE_FILE, model, optimizer, epoch, best, hard_cache, report, fingerprint)

    model.load(best["state"])
    wpca_state, wpca = None, None
    if num_pcs and options.whitening == "learned":
        best, whitening = _learned_whitening(model, (start, best), train_split, val_split, criteria, num_pcs, options,
                                             echo)
        wpca_state, num_pcs = whitening.conv_state(), int(whitening.weight.shape[0])
        report["whitening"] = whitening.summary()
    elif num_pcs:
        echo(f"refitting the WPCA ({num_pcs} dims) on the training images")
        wpca_state, num_pcs = _refit_wpca(model, train_split, num_pcs, options, progress)
        report["whitening"] = {"method": "pca"}
    if wpca_state is not None:
        wpca = WPCA.from_conv(wpca_state["WPCA.0.weight"], wpca_state["WPCA.0.bias"])
    report["best_epoch"] = best["epoch"]
    report["after"] = validation_metrics(model, val_split, criteria, options)
    report["after"]["recall_wpca"] = validation_metrics(model, val_split, criteria, options, wpca)["recall"]
    _print_metrics(echo, f"after (epoch {best['epoch']})", report["after"])
    metadata = {
        "kind": "trained", "backbone": contents.backbone, "num_clusters": model.pooling.num_clusters,
        "num_pcs": num_pcs, "vladv2": model.pooling.vladv2, "patch_sizes": list(model.pooling.patch_sizes),
        "strides": list(model.pooling.strides), "image_height": image_size[0], "image_width": image_size[1],
        "trained_from_sha256": fingerprint["checkpoint_sha256"], "best_epoch": best["epoch"],
        "epochs": options.epochs, "train_layers": options.train_layers, "seed": options.seed,
        "criteria": dataclasses.asdict(criteria), "num_images": len(train_split.data),
        "whitening": report.get("whitening", {}).get("method"),
        "validation_recall": report["after"]["recall_wpca"],
    }
    save_checkpoint(out, encoder.backbone, model.pooling, wpca_state, metadata)
    if calibration is not None:
        report["calibration"] = _calibrate(out, val_split, criteria, calibration, dev, work, progress, echo)
    report.update(checkpoint=str(out), n_frames=len(data), n_train_frames=len(train_split.data),
                  n_val_frames=len(val_split.data), n_train_queries=len(train_split.queries),
                  n_val_queries=len(val_split.queries), options=dataclasses.asdict(options),
                  criteria=dataclasses.asdict(criteria), device=str(dev))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    echo(f"wrote {out} (best epoch {best['epoch']}) and {report_path}")
    return report


def _calibrate(out: Path, split: Split, criteria: PlaceCriteria, request, dev, work: Path, progress: bool,
               echo) -> dict:
    """``calibrate`` of the written checkpoint on the validation places (every validation frame a query
    against the others, :func:`vlad_localization.calibration.calibrate_runs`): the config YAML beside
    ``out`` and what it keeps; a calibration that cannot be made is reported, not raised (the
    checkpoint is written)."""
    from vlad_localization.calibration import calibrate_runs, config_path_beside, summary_line, write_config

    if not len(split.queries):
        echo("not calibrated: no validation place has a positive (raise --val-fraction, or run "
             "`vlad-localization calibrate` on other revisits)")
        return {"config": None}
    echo(f"calibrating the loop-closure threshold on the {len(split.data)} validation frames "
         f"(precision {request.precision:g})")
    try:
        result = calibrate_runs(out, split.data, criteria, request, str(dev), progress, work)
    except (ValueError, np.linalg.LinAlgError) as exc:
        echo(f"not calibrated: cannot refit the fused model on the validation places ({exc}); run "
             "`vlad-localization calibrate` on more revisits")
        return {"config": None}
    if result.score_threshold is None:
        echo(f"not calibrated: no threshold reaches precision {request.precision:g} on the validation places "
             f"({result.n_queries_with_match} of {result.n_queries} frames with a true match); run "
             "`vlad-localization calibrate` on more revisits or with a lower --precision")
        return {**result.as_dict(), "config": None}
    note = (f"calibrated by vlad-localization train on its {result.n_queries} validation frames: precision "
            f"{result.precision:.4f}, recall {result.recall:.4f}, checkpoint {out}")
    path = write_config(config_path_beside(out), request.base, result, note, request.config.loop_closure)
    echo(f"calibrated on the validation places: {summary_line(result)}")
    echo(f"wrote {path} (use --config {path})")
    return {**result.as_dict(), "config": str(path)}


def _frames_digest(data: TrainingFrames) -> str:
    """What identifies the training frames: sources, stamps and positions (sha256)."""
    digest = hashlib.sha256()
    for f in data.frames:
        digest.update(f"{f.source}|{f.stamp_ns};".encode())
    digest.update(np.ascontiguousarray(data.position).tobytes())
    return digest.hexdigest()


def _cached_features(path: Path, fingerprint: dict, trunk, splits: Sequence[Split], image_size, dev, progress) -> None:
    """Fill each split's ``feats``: from ``path`` when it was written for the same frames, checkpoint,
    split and input size, else computed once (:func:`cache_features`) and saved there."""
    key = json.dumps({k: fingerprint[k] for k in ("checkpoint_sha256", "frames", "seed", "train_layers", "criteria",
                                                   "image_size", "split")}, sort_keys=True)
    if path.is_file():
        try:
            saved = load_torch_file(path)
            if saved.get("key") == key:
                for i, split in enumerate(splits):
                    split.feats = saved["features"][i] if len(split.data) else None
                return
        except CheckpointError as exc:
            log.warning("recomputing the conv features: %s", exc)
    for split in splits:
        if len(split.data):
            split.feats = cache_features(trunk, split.data.frames, image_size, dev, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "features": [s.feats if s.feats is not None else torch.zeros(0) for s in splits]}, tmp)
    tmp.replace(path)


def _score(metrics: dict) -> tuple:
    """Best-epoch key: validation recall@1, then recall@5, then the lower loss."""
    r = metrics["recall"]
    loss = metrics.get("loss")
    return (r["1"] or 0.0, r["5"] or 0.0, -(loss if loss is not None else 0.0))


def _print_metrics(echo, label: str, m: dict) -> None:
    recall = " ".join(f"R@{k} {v:.3f}" for k, v in m["recall"].items() if v is not None) or "no validation queries"
    extra = f", val loss {m['loss']:.4f}" if m.get("loss") is not None else ""
    extra += f", train loss {m['train_loss']:.4f} on {m['triplets']} triplets" if "train_loss" in m else ""
    if m.get("recall_wpca") and m["recall_wpca"]["1"] is not None:
        extra += ", with WPCA " + " ".join(f"R@{k} {v:.3f}" for k, v in m["recall_wpca"].items())
    echo(f"{label}: {recall}{extra}")


def _learned_whitening(model: Model, candidates: Sequence[dict], train_split: Split, val_split: Split,
                       criteria: PlaceCriteria, num_pcs: int, options: TrainOptions, echo) -> tuple[dict, Whitening]:
    """The learned whitening of each candidate epoch's layer (the start and the best epoch), fitted on
    the training frames and chosen on the validation places: the better candidate (the later one on
    a tie, or without validation) and its whitening; ``model`` is left holding that candidate."""
    chosen = None
    for cand in {c["epoch"]: c for c in candidates}.values():
        model.load(cand["state"])
        val = model.describe(val_split.feats) if val_split.feats is not None else None
        w = choose_whitening(model.describe(train_split.feats), train_split.data, train_split.pairs, num_pcs, val,
                             val_split.data, val_split.pairs, criteria, options.max_pca_samples, options.seed)
        found = f", validation R@1 {w.validation['1']:.3f} R@5 {w.validation['5']:.3f}" if w.validation else ""
        echo(f"learned whitening of epoch {cand['epoch']}: {w.num_pairs} pairs of one place, PCA to {w.pca_dims} dims, "
             f"shrinkage {w.shrinkage:g}{found}")
        key = (w.validation["1"], w.validation["5"]) if w.validation else (0.0, 0.0)
        if chosen is None or key >= chosen[0]:
            chosen = (key, cand, w)
    model.load(chosen[1]["state"])
    return chosen[1], chosen[2]


def _refit_wpca(model: Model, split: Split, num_pcs: int, options: TrainOptions, progress: bool):
    def features():
        with torch.no_grad():
            for i, frame in enumerate(split.data.frames):
                yield frame.source, model.head(split.feats[i : i + 1].to(model.device).float())

    rng = np.random.default_rng([options.seed, 0])
    samples = vlad_samples(model.pooling, features(), len(split.data), model.device, options.max_pca_samples, rng,
                           progress)
    return wpca_from_samples(samples, num_pcs, len(split.data))


def _save_state(path: Path, model: Model, optimizer, epoch: int, best: dict, hard_cache: dict, report: dict,
                fingerprint: dict) -> None:
    """This epoch's model in the official layout (no WPCA: it is refitted at the end) with what
    ``--resume`` needs: optimizer, hard-negative cache, best epoch, report so far (all weights_only)."""
    training = {
        "epoch": epoch, "optimizer": optimizer.state_dict(), "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "best_epoch": best["epoch"], "best_key": list(best["key"]), "best_state": best["state"],
        "hard_negatives": {str(q): torch.from_numpy(v) for q, v in hard_cache.items()},
        "report": json.dumps(report),
    }
    save_checkpoint(path, model.encoder.backbone, model.pooling, None, {"kind": "training-state", "epoch": epoch},
                    extra={"training": training})


def _read_state(path: Path, fingerprint: dict) -> tuple[Path, dict]:
    """The training state at ``path`` for ``--resume``, checked to come from the same checkpoint, runs and options."""
    if not path.is_file():
        raise TrainingDataError(f"--resume: no training state at {path}: train without --resume first")
    raw = load_torch_file(path)
    training = raw.get("training") if isinstance(raw, dict) else None
    if not isinstance(training, dict):
        raise CheckpointError(path, "not a training state written by `vlad-localization train`")
    saved = json.loads(training["fingerprint"])
    now = json.loads(json.dumps(fingerprint, sort_keys=True))
    if saved != now:
        diff = sorted(k for k in now if saved.get(k) != now[k])
        raise TrainingDataError(f"--resume: {path} was trained with other {', '.join(diff)}: give the same "
                                "checkpoint, runs and options, or start again without --resume")
    return path, training


def _resume(saved_state: tuple[Path, dict], model: Model, optimizer, report: dict):
    """Load the model, optimizer, report, best epoch and hard-negative cache; the next epoch."""
    path, training = saved_state
    contents = read_checkpoint(path)
    load_module_state(model.encoder.backbone, contents.backbone_state, path, "backbone")
    load_module_state(model.pooling, contents.pool_state, path, "NetVLAD")
    optimizer.load_state_dict(training["optimizer"])
    report.update(json.loads(training["report"]))
    best = {"epoch": int(training["best_epoch"]), "key": tuple(training["best_key"]), "state": training["best_state"]}
    hard = {int(q): v.numpy() for q, v in training["hard_negatives"].items()}
    return int(training["epoch"]) + 1, best, hard
