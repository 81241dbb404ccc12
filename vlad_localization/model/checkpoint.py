"""Reading and writing Patch-NetVLAD checkpoints, safely.

Accepted inputs:
* official checkpoints (``pittsburgh_WPCA{128,512,4096}.pth.tar``, ``mapillary_WPCA*``):
  ``{'state_dict': {'encoder.N.*', 'pool.centroids', 'pool.conv.weight'[, 'pool.conv.bias'],
  'WPCA.0.weight', 'WPCA.0.bias'}}`` - num_clusters / num_pcs / vladv2 are read from the shapes;
* plain backbone state dicts (torchvision layout, e.g. ``features.N.*`` for VGG16);
* the name of a known checkpoint (``pittsburgh_WPCA512``, see ``known_checkpoints``), read from
  the cache; an existing file of that name wins. A name not downloaded yet is refused with the
  ``vlad-localization download-weights NAME`` command to run (nothing is downloaded here).

Files are always read with ``torch.load(weights_only=True)``: a file that needs arbitrary pickled
objects (which could run code) is refused with :class:`CheckpointError`, never executed.
"""
from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .backbones import detect_backbone
from .known_checkpoints import resolve_checkpoint_path

_BACKBONE_PREFIXES = ("encoder.", "features.", "backbone.", "")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe or not a Patch-NetVLAD/backbone checkpoint."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"checkpoint {path}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass
class CheckpointContents:
    """What a checkpoint holds, split by module (keys without their ``encoder.``/``pool.`` prefix)."""

    path: Path
    backbone: str
    backbone_state: dict[str, torch.Tensor]
    pool_state: dict[str, torch.Tensor] = field(default_factory=dict)
    wpca_weight: torch.Tensor | None = None  # (num_pcs, K*C, 1, 1)
    wpca_bias: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def has_pooling(self) -> bool:
        return bool(self.pool_state)

    @property
    def num_clusters(self) -> int:
        return int(self.pool_state["centroids"].shape[0])

    @property
    def dim(self) -> int:
        return int(self.pool_state["centroids"].shape[1])

    @property
    def vladv2(self) -> bool:
        return "conv.bias" in self.pool_state

    @property
    def num_pcs(self) -> int | None:
        return None if self.wpca_weight is None else int(self.wpca_weight.shape[0])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with errors turned into
    :class:`CheckpointError` (missing, not a torch file, truncated, pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "file is empty")
    if not _looks_like_torch_file(path):
        raise CheckpointError(path, "this file is not a PyTorch checkpoint (.pth/.pth.tar); pass a "
                              "Patch-NetVLAD checkpoint or a backbone state dict written by torch.save")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            path,
            "refused: it contains pickled Python objects beyond tensors and plain containers "
            f"(loading it could run code). Re-save only the state_dict. Details: {str(exc).splitlines()[0]}",
        ) from exc
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(path, f"truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    except RuntimeError as exc:
        text = str(exc)
        problem = "truncated or corrupt" if "zip archive" in text or "reader" in text.lower() else "unreadable"
        raise CheckpointError(path, f"{problem}: not a complete torch file ({text.splitlines()[0]})") from exc
    except Exception as exc:  # noqa: BLE001 - any other decoder failure: not a torch file
        raise CheckpointError(path, f"not a torch checkpoint ({type(exc).__name__}: {exc})") from exc


def _numpy_scalar_globals() -> list:
    """numpy scalars and their dtypes, allowed beside tensors: the reference trainer saves
    ``best_score`` / ``recalls`` as numpy floats. They rebuild data (a dtype and its bytes), never code."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]  # numpy 2 and 1 names


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save's zip format (a zip local-file header, also when truncated) or its legacy format
    (a pickle, whose first byte is the protocol opcode 0x80)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head == b"PK\x03\x04" or head[:1] == b"\x80" or zipfile.is_zipfile(path)


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(path, "expected a state dict (a mapping of names to tensors)")
    state = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):  # DataParallel wraps the whole model or its parts
            state[re.sub(r"(^|\.)module\.", r"\1", key)] = value
    if not state:
        raise CheckpointError(path, "holds no tensors")
    return state


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or the cached file of a known checkpoint name (when no such file exists)."""
    resolved, entry = resolve_checkpoint_path(path)
    if entry is not None and not resolved.is_file():
        raise CheckpointError(path, f"a known checkpoint, not downloaded yet (no {resolved}): "
                              f"run `vlad-localization download-weights {entry.name}`")
    if not resolved.exists() and resolved.parent == Path("."):  # a bare name: maybe a mistyped known one
        raise CheckpointError(path, "file does not exist, nor is it a known checkpoint name "
                              "(`vlad-localization download-weights --list` shows them)")
    return resolved


def read_checkpoint(path: str | Path) -> CheckpointContents:
    """Load a Patch-NetVLAD checkpoint or a plain backbone state dict (no pooling/WPCA then), from
    a file or by a known checkpoint's name (:func:`checkpoint_file`)."""
    path = checkpoint_file(path)
    raw = load_torch_file(path)
    state = _state_dict(raw, path)
    backbone_state, backbone = {}, None
    for prefix in _BACKBONE_PREFIXES:
        candidate = _strip(state, prefix)
        backbone = detect_backbone(candidate)
        if backbone:
            backbone_state = candidate
            break
    if backbone is None:
        raise CheckpointError(
            path,
            "no backbone weights found: expected VGG16 'encoder.N.*'/'features.N.*' (conv1_1..conv5_3) "
            "or ResNet 'conv1.*'/'layer1..3.*' keys",
        )
    if backbone.startswith("resnet"):  # drop what a full torchvision ResNet has beyond layer3
        backbone_state = {
            k: v for k, v in backbone_state.items() if not k.startswith(("layer4.", "fc.", "pool.", "WPCA."))
        }
    pool_state = _strip(state, "pool.")
    if pool_state:
        for key in ("centroids", "conv.weight"):
            if key not in pool_state:
                raise CheckpointError(path, f"missing key 'pool.{key}' (NetVLAD layer incomplete)")
        k, c = pool_state["centroids"].shape if pool_state["centroids"].dim() == 2 else (None, None)
        if k is None or tuple(pool_state["conv.weight"].shape) != (k, c, 1, 1):
            raise CheckpointError(
                path,
                f"wrong shapes: pool.centroids {tuple(pool_state['centroids'].shape)} and "
                f"pool.conv.weight {tuple(pool_state['conv.weight'].shape)} must be (K, C) and (K, C, 1, 1)",
            )
        if "conv.bias" in pool_state and tuple(pool_state["conv.bias"].shape) != (k,):
            raise CheckpointError(path, f"wrong shape: pool.conv.bias {tuple(pool_state['conv.bias'].shape)} != ({k},)")
    wpca_weight, wpca_bias = state.get("WPCA.0.weight"), state.get("WPCA.0.bias")
    if wpca_weight is not None:
        if not pool_state:
            raise CheckpointError(path, "has WPCA.0.* but no NetVLAD 'pool.*' layer")
        expected_in = pool_state["centroids"].numel()
        if (wpca_weight.dim() != 4 or wpca_weight.shape[0] < 1 or wpca_weight.shape[1] != expected_in
                or wpca_weight.shape[2:] != (1, 1)):
            raise CheckpointError(
                path,
                f"wrong shape: WPCA.0.weight {tuple(wpca_weight.shape)}, expected (num_pcs, {expected_in}, 1, 1) "
                "= (num_pcs, num_clusters * channels, 1, 1)",
            )
        if wpca_bias is not None and tuple(wpca_bias.shape) != (wpca_weight.shape[0],):
            raise CheckpointError(path, f"wrong shape: WPCA.0.bias {tuple(wpca_bias.shape)}")
    metadata = raw.get("vlad_localization", {}) if isinstance(raw, Mapping) else {}
    return CheckpointContents(
        path=path,
        backbone=backbone,
        backbone_state=backbone_state,
        pool_state=pool_state,
        wpca_weight=wpca_weight,
        wpca_bias=wpca_bias,
        metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
    )


def load_module_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a :class:`CheckpointError` naming the
    missing / unexpected / mis-shaped keys."""
    expected = module.state_dict()
    state = dict(state)
    for key in expected:  # BatchNorm counters (since PyTorch 0.4.1) are not weights: older files lack them
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(path, f"missing {what} key(s) {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    bad = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise CheckpointError(path, f"wrong {what} shape(s): {'; '.join(bad[:4])}")
    module.load_state_dict({k: state[k] for k in expected}, strict=True)


def save_checkpoint(
    path: str | Path,
    backbone: torch.nn.Module,
    pooling: torch.nn.Module,
    wpca_state: Mapping[str, torch.Tensor] | None,
    metadata: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the official layout ``{'state_dict': {encoder.*, pool.*, WPCA.0.*}}`` (+ plain-typed
    ``vlad_localization`` metadata and ``extra`` top-level entries of tensors and plain types, e.g.
    a training state), loadable by the reference and by :func:`read_checkpoint`."""
    state: dict[str, torch.Tensor] = {}
    state.update({f"encoder.{k}": v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()})
    state.update({f"pool.{k}": v.detach().cpu().contiguous() for k, v in pooling.state_dict().items()})
    if wpca_state:
        state.update({k: v.detach().cpu().contiguous() for k, v in wpca_state.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**dict(extra or {}), "state_dict": state, "vlad_localization": dict(metadata or {})}, tmp)
    tmp.replace(path)
    return path
