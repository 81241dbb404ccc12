"""Device selection: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a config/CLI string; raises ValueError when it is unavailable."""
    if isinstance(spec, torch.device):
        return spec
    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ValueError(f"device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"device {spec!r}: Apple MPS is not available (use cpu or auto)")
    elif device.type != "cpu":
        raise ValueError(f"device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def use_half(device: torch.device, requested: bool) -> bool:
    """fp16 is only used on CUDA (CPU/MPS half convs are slow or inexact); a request elsewhere is ignored."""
    return bool(requested) and device.type == "cuda"
