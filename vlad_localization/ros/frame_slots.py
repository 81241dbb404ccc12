"""Newest-frame-only slots in shared memory: the node's frames reach the inference process without
pickling a pixel.

One slot per camera: a ``multiprocessing.shared_memory`` block holding a sequence number and the
frame's arrays (the image, and its depth or stereo right image alongside). The writer
(:class:`FrameSlots`, in the node) copies a frame in and returns a small :class:`FrameRef` (block
name, sequence number, layout) that travels over a pipe; the reader (:class:`SlotReader`, in the
inference process) copies the arrays out. A frame is never torn: the writer makes the block's
sequence number odd while it writes and even when done, and the reference carries the CRC-32 of the
frame's bytes; the reader keeps its copy only when the sequence was the frame's before and after
copying and the copy's CRC-32 is the reference's, else the frame was superseded (a newer one is on
its way) and is dropped. The sequence number is the fast path; the checksum is the guarantee: it
holds whatever order another core sees the stores in (aarch64 reorders stores and loads, and Python
cannot place a memory fence), because the checksum travels in the reference over the pipe, not
through the shared block. It costs one CRC-32 pass over the frame on each side (zlib, which releases
the GIL; a fraction of a millisecond for 640x480 RGB).

A frame larger than the block gets a new, larger block (new name; the old one is left odd and
unlinked: a reader still holding it, or attaching late, drops the frame). The writer never waits
for the reader, so a reader that dies mid-copy blocks nothing.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np

HEADER_BYTES = 64  # the sequence number, then padding: data starts cache-line aligned
ALIGN = 64
GROWTH = 1.25  # a reallocated block leaves room for slightly larger frames


@dataclass(frozen=True)
class FrameRef:
    """Where one frame is: block ``name``, its sequence number ``seq`` when written, each array's
    (dtype, shape, byte offset) and the CRC-32 of the arrays' bytes in that order."""

    camera: int
    name: str
    seq: int
    layout: tuple[tuple[str, str, tuple[int, ...], int], ...]  # (key, dtype str, shape, offset)
    checksum: int


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def checksum(arrays) -> int:
    """CRC-32 of the bytes of ``arrays`` (C-contiguous), in order."""
    crc = 0
    for a in arrays:
        crc = zlib.crc32(a, crc)
    return crc


def _sequence(block: shared_memory.SharedMemory) -> np.ndarray:
    return np.ndarray((1,), np.uint64, block.buf, 0)


def attach(name: str) -> shared_memory.SharedMemory:
    """Attach to an existing block without registering it with multiprocessing's resource tracker
    (the writer owns and unlinks it; Python < 3.13 would register every attach, and the tracker
    would unlink or warn about the block when the reader exits)."""
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        pass
    register = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register


class FrameSlots:
    """The writer's side: one block per camera, created on the first frame, grown when a frame
    does not fit. Not thread-safe: one writer thread."""

    def __init__(self, num_cameras: int):
        self._blocks: list[shared_memory.SharedMemory | None] = [None] * num_cameras
        self.reallocations = 0

    def write(self, camera: int, arrays: dict[str, np.ndarray]) -> FrameRef:
        """Copy ``arrays`` into the camera's slot (replacing its previous frame); the reference
        to send to the reader."""
        arrays = {key: np.ascontiguousarray(a) for key, a in arrays.items()}
        layout, offset = [], HEADER_BYTES
        for key, a in arrays.items():
            layout.append((key, a.dtype.str, tuple(a.shape), offset))
            offset = _aligned(offset + a.nbytes)
        block = self._block(camera, offset)
        seq = _sequence(block)
        start = int(seq[0])
        seq[0] = start + 1  # odd: being written
        for (key, dtype, shape, off), a in zip(layout, arrays.values()):
            np.ndarray(shape, dtype, block.buf, off)[...] = a
        seq[0] = start + 2
        return FrameRef(camera, block.name, start + 2, tuple(layout), checksum(arrays.values()))

    def _block(self, camera: int, nbytes: int) -> shared_memory.SharedMemory:
        block = self._blocks[camera]
        if block is not None and block.size >= nbytes:
            return block
        new = shared_memory.SharedMemory(create=True, size=int(nbytes * GROWTH) if block is not None else nbytes)
        if block is not None:  # its sequence continues; the old block stays odd: a reader holding it drops its frame
            last = int(_sequence(block)[0])
            _sequence(new)[0] = last + 2
            _sequence(block)[0] = last + 1
            self._unlink(block)
            self.reallocations += 1
        self._blocks[camera] = new
        return new

    @staticmethod
    def _unlink(block: shared_memory.SharedMemory) -> None:
        block.close()
        try:
            block.unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Unlink every block (the reader's mappings stay valid until it closes them)."""
        for block in self._blocks:
            if block is not None:
                self._unlink(block)
        self._blocks = [None] * len(self._blocks)


class SlotReader:
    """The reader's side: attaches to the blocks named in the references it is given."""

    def __init__(self):
        self._blocks: dict[int, shared_memory.SharedMemory] = {}  # camera -> its current block
        self.checksum_drops = 0  # copies the sequence number passed but the checksum caught

    def read(self, ref: FrameRef) -> dict[str, np.ndarray] | None:
        """A copy of the frame ``ref`` points at, or None when it was superseded (a newer frame was
        written over it, or its block was replaced)."""
        block = self._block(ref)
        if block is None:
            return None
        seq = _sequence(block)
        if int(seq[0]) != ref.seq:
            return None
        frame = {key: np.array(np.ndarray(shape, dtype, block.buf, offset))
                 for key, dtype, shape, offset in ref.layout}
        if int(seq[0]) != ref.seq:
            return None
        if checksum(frame.values()) != ref.checksum:
            self.checksum_drops += 1
            return None
        return frame

    def _block(self, ref: FrameRef) -> shared_memory.SharedMemory | None:
        block = self._blocks.get(ref.camera)
        if block is not None and block.name == ref.name:
            return block
        if block is not None:
            block.close()
            del self._blocks[ref.camera]
        try:
            block = attach(ref.name)
        except FileNotFoundError:  # replaced by a larger block since: a newer frame is on its way
            return None
        self._blocks[ref.camera] = block
        return block

    def close(self) -> None:
        for block in self._blocks.values():
            try:
                block.close()
            except BufferError:  # an array still views it: the mapping goes with the process
                pass
        self._blocks.clear()
