"""A .zst file read frame by frame, so that damage costs one frame, not the rest of the file.

IIPC's zstd WARC layout compresses each record as its own frame (as gzip WARCs do per member). A
frame that fails to decode (a bad checksum, corrupt data) is counted and skipped: reading resumes
at the next frame magic. A frame cut short by the end of the file is counted as a truncated
record. A frame's output is handed on only once the frame is complete (up to FRAME_BUFFER bytes;
a bigger one streams), and at damage only up to the last record start in it, so the WARC reader
never sees half a damaged record and a file compressed as one frame keeps the records before it.
Records are WARC records or, with `lines=True` (JSONL), lines; a line file's damage is noted at the
line number (from 1, of the lines read) where the lost part begins.
"""

from __future__ import annotations

import io

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
FRAME_BUFFER = 64 << 20
FEED = 1 << 13  # compressed bytes decoded at once


def find_magic(f, position: int, magic: bytes, chunk: int = 1 << 20) -> int | None:
    """Offset of the next `magic` in seekable file `f` at or after `position`, or None at its end."""
    f.seek(position)
    tail = b""
    while True:
        block = f.read(chunk)
        if not block:
            return None
        data = tail + block
        found = data.find(magic)
        if found >= 0:
            return position - len(tail) + found
        position += len(block)
        tail = data[-(len(magic) - 1) :]


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a seekable .zst file `f`; damage is noted in `damaged`
    (pipeline/damage.py) at the decompressed offset where the lost frame would have begun."""

    def __init__(self, f, damaged, lines: bool = False):
        import zstandard

        self.zstd, self.f, self.damaged, self.lines = zstandard, f, damaged, lines
        self.newlines = 0  # in the output handed on (lines=True)
        self.pending, self.ready, self.done = b"", bytearray(), False
        self.frame = None  # the frame being decoded: its decompressor, output not yet handed on, where it began
        self.frame_out, self.frame_c = bytearray(), 0
        self.c_pos = f.tell()  # compressed offset of the next byte fed
        self.d_pos = 0  # decompressed bytes handed on
        self.read_pos = 0  # decompressed bytes read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # only to say where it is (fastwarc asks): see seek

    def tell(self) -> int:
        return self.read_pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Only to where the stream already is: decompressed data cannot be sought."""
        target = offset if whence == io.SEEK_SET else self.read_pos + offset if whence == io.SEEK_CUR else None
        if target != self.read_pos:
            raise io.UnsupportedOperation("a zstd stream is read forward only")
        return self.read_pos

    def readinto(self, buffer) -> int:
        while not self.ready and not self.done:
            self._step()
        n = min(len(buffer), len(self.ready))
        buffer[:n] = self.ready[:n]
        del self.ready[:n]
        self.read_pos += n
        return n

    def _step(self) -> None:
        data = self.pending[:FEED] or self.f.read(FEED)  # small feeds: an error loses only the last one's output
        self.pending = self.pending[FEED:]
        if not data:
            if self.frame is not None:
                self._hand_on_whole_records()
                self._note("truncated_record")
            else:
                self._hand_on(whole=True)  # a last line without a newline
            self.done = True
            return
        if self.frame is None:
            self.frame = self.zstd.ZstdDecompressor().decompressobj()
            # A line cut by a frame's end continues in the next frame's output.
            self.frame_out, self.frame_c = (self.frame_out if self.lines else bytearray()), self.c_pos
        try:
            self.frame_out += self.frame.decompress(data)
        except self.zstd.ZstdError:
            self._hand_on_whole_records()
            self._note("zstd_error")
            self.frame, self.pending = None, b""
            found = find_magic(self.f, self.frame_c + 1, ZSTD_MAGIC)
            if found is None:
                self.done = True
            else:
                self.f.seek(found)
                self.c_pos = found
            return
        self.c_pos += len(data)
        if self.frame.eof:
            self.pending = self.frame.unused_data + self.pending[FEED:]
            self.c_pos -= len(self.frame.unused_data)
            self.frame = None
            self._hand_on()
        elif len(self.frame_out) > FRAME_BUFFER:
            self._hand_on()

    def _note(self, reason: str) -> None:
        self.damaged.note(reason, self.newlines + 1 if self.lines else self.d_pos)

    def _hand_on_whole_records(self) -> None:
        """At damage: the records of the frame before the one it cut (a frame of many records)."""
        if self.lines:
            cut = self.frame_out.rfind(b"\n") + 1
        else:
            cut = self.frame_out.rfind(b"WARC/1.")
            while cut > 0 and self.frame_out[cut - 1 : cut] != b"\n":
                cut = self.frame_out.rfind(b"WARC/1.", 0, cut)
        self.frame_out = self.frame_out[: max(cut, 0)]
        self._hand_on(whole=True)

    def _hand_on(self, whole: bool = False) -> None:
        """The output so far; of a line file, only whole lines (the rest waits for its end)."""
        cut = len(self.frame_out) if whole or not self.lines else self.frame_out.rfind(b"\n") + 1
        out = self.frame_out[:cut]
        self.ready += out
        self.d_pos += len(out)
        self.newlines += out.count(b"\n")
        self.frame_out = self.frame_out[cut:]
