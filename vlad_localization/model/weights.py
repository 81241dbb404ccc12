"""Known checkpoints into the cache: download (resumable, verified), shape check, then into place.

    fetched = download_checkpoint(load_table()["pittsburgh_WPCA512"])            # from the model hub
    fetched = download_checkpoint(entry, mirror="http://10.0.0.5/patchnetvlad")  # a site with the same files

Order: the bytes go to ``<cache>/<name>.pth.tar.part``; the size and the sha256 are verified (see
:func:`~vlad_localization.model.download.fetch`); the file is loaded once with the safe loader
(``weights_only``) and its backbone / clusters / PCs compared with the table's; only then is it
renamed to ``<cache>/<name>.pth.tar``, the path every ``--checkpoint NAME`` reads. Nothing is ever
downloaded implicitly: loading a name that is not cached is an error naming this command.
"""
from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

from .checkpoint import CheckpointError, file_sha256, read_checkpoint
from .download import DownloadError, fetch
from .known_checkpoints import KnownCheckpoint, cached_path, presets_fitting

log = logging.getLogger(__name__)


class Fetched(NamedTuple):
    path: Path
    downloaded: bool  # False: it was in the cache already (and verified)


def download_checkpoint(entry: KnownCheckpoint, mirror: str | None = None, sha256: str | None = None, *,
                        progress: bool = True, retries: int = 3, timeout: float = 30.0) -> Fetched:
    """Make ``entry`` available in the cache (``sha256`` pins a digest over the table's) and return
    where. A cached file that fails verification is fetched again, and replaced once the new one
    passes. Raises :class:`DownloadError` (one line: the URL, the problem and the ways out) or
    :class:`CheckpointError` (wrong shapes)."""
    dest = cached_path(entry.name)
    digest = (sha256 or entry.sha256 or "").lower() or None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):  # two processes fetching one name take turns
        if dest.is_file():
            problem = verification_problem(dest, entry.size, digest)
            if problem is None:
                return Fetched(dest, False)
            log.warning("cached %s %s: downloading it again (it stays until the new one is verified)", dest, problem)
        urls = entry.urls_from(mirror)
        for i, url in enumerate(urls):
            try:
                part = fetch(url, dest.with_name(dest.name + ".part"), entry.size, digest,
                             retries=retries, timeout=timeout, progress=progress, desc=entry.name)
                break
            except DownloadError as exc:
                if exc.status == 404 and i + 1 < len(urls):
                    continue  # the mirror may serve the cache's name instead
                raise DownloadError(f"{exc}. {ways_out(entry)}", exc.status) from None
        try:
            check_shapes(part, entry)
        except CheckpointError:
            part.unlink()
            raise
        os.replace(part, dest)
    return Fetched(dest, True)


def check_shapes(path: Path, entry: KnownCheckpoint) -> None:
    """Load ``path`` once (``weights_only``) and refuse it unless it is a full Patch-NetVLAD
    checkpoint with the table's backbone, clusters and PCs."""
    contents = read_checkpoint(path)
    if not contents.has_pooling:
        raise CheckpointError(path, f"holds only backbone weights, but {entry.name} is a Patch-NetVLAD "
                              "checkpoint: refused")
    found = {"backbone": contents.backbone, "num_clusters": contents.num_clusters, "num_pcs": contents.num_pcs}
    wrong = [f"{k} {found[k]} (expected {v})" for k, v in entry.shape().items() if v is not None and found[k] != v]
    if wrong:
        raise CheckpointError(path, f"not the {entry.name} the table describes: {', '.join(wrong)}; refused")


def verification_problem(path: Path, size: int | None, sha256: str | None) -> str | None:
    """Why ``path`` is not the expected file (size, then sha256), or None when it is."""
    got = path.stat().st_size
    if size is not None and got != size:
        return f"has {got} bytes, expected {size}"
    if sha256 and file_sha256(path) != sha256:
        return "has another sha256 than expected"
    return None


def describe_shape(entry: KnownCheckpoint) -> str:
    fits = presets_fitting(entry.shape())
    return (f"{entry.backbone} K={entry.num_clusters} PCs={entry.num_pcs}; "
            f"preset{'s' if len(fits) != 1 else ''} {', '.join(fits) or 'none'}")


def ways_out(entry: KnownCheckpoint) -> str:
    """What to do when the file cannot be downloaded from here (one sentence)."""
    return (f"Ways out: --mirror URL (a site serving {entry.file}), or copy {entry.file} to "
            f"{cached_path(entry.name)}, or build a model of your own with `vlad-localization init-model`")


@contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    with open(dest.with_name(f".{dest.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
