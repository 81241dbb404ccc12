"""Figures of ``vlad-localization evaluate`` (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_report(report: dict, out: str | Path) -> Path:
    """Recall@K of each ranking (left) and the fused loop-closure precision-recall curve (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, row in report["rankings"].items():
        ks = [int(k) for k in row["recall"]]
        left.plot(ks, list(row["recall"].values()), marker="o", label=name)
    left.set(xlabel="K", ylabel="recall@K", ylim=(0, 1.02), title=f"retrieval ({report['n_queries']} queries)")
    left.set_xscale("log")
    left.set_xticks(ks, [str(k) for k in ks])
    left.legend()
    lc = report["loop_closure"]
    curve = np.array(lc["curve"], np.float64).reshape(-1, 3)
    if len(curve):
        order = np.argsort(curve[:, 2], kind="stable")
        right.step(curve[order, 2], curve[order, 1], where="post", marker=".")
    right.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
              title=f"loop closure, fused top-1 (AUC {lc['auc']:.3f})")
    if lc["threshold_at_99_precision"] is not None:
        right.axhline(0.99, color="grey", lw=0.8, ls="--")
        right.text(0.02, 0.95, f"99 % precision: threshold {lc['threshold_at_99_precision']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def _map_image(db, map_id: int) -> np.ndarray | None:
    """The map keyframe's image file when it still exists, else its thumbnail (None: neither)."""
    from vlad_localization.images import load_rgb

    source = Path(db.keyframe(map_id).source)
    if source.is_file():
        try:
            return load_rgb(source)
        except ValueError:
            pass
    return db.thumbnail(map_id)


def plot_examples(failures, db, out: str | Path) -> Path:
    """One row per failure (``evaluation.worst_failures``): query, wrong top-1, true match."""
    from vlad_localization.images import load_rgb

    plt = _pyplot()
    rows = max(1, len(failures))
    fig, axes = plt.subplots(rows, 3, figsize=(10, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not failures:
        axes[0, 1].set_title("no failures: every fused top-1 is a true match")
    for row, (record, wrong, true) in zip(axes, failures):
        images = (load_rgb(record.query), _map_image(db, wrong), _map_image(db, true))
        titles = (Path(record.query).name, f"top-1: map {wrong} (wrong)", f"true match: map {true}")
        for ax, image, title in zip(row, images, titles):
            if image is not None:
                ax.imshow(image)
            ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return Path(out)
