"""Is a volume file whole? What its header declares against the voxel bytes the file really holds.

ITK reads a NIfTI file that ends early (a copy cut short, a gzip stream that stops) as if the missing voxels were
zero, and turns NaN/inf voxels into 0 as well, so a broken study would be scored as a real one. NRRD and MetaImage
readers do notice, but say "No such file or directory". ``check_volume_data`` looks at the file itself first:

- NIfTI-1/-2 (.nii, .nii.gz; gzip or not, told by its magic bytes): ``vox_offset + prod(dim) * bytes per voxel``
  against the (decompressed) stream; float data is checked for NaN/inf in the same pass.
- NRRD (.nrrd attached, .nhdr detached; raw, gzip, bzip2): ``prod(sizes) * sizeof(type)`` after ``line skip`` /
  ``byte skip`` against the data (file or decompressed stream).
- MetaImage (.mha LOCAL, .mhd + data file; raw or zlib-compressed): ``prod(DimSize) * channels * sizeof(type)``.

A compressed stream is read to its end, so one that stops early (no end marker, CRC not reached) is refused
even when the voxels it holds would be enough. Uncompressed integer data is judged by the file size alone.
Headers this module does not understand (ASCII encodings, lists of data files) are left to ITK.
"""

from __future__ import annotations

import bz2
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

from common.errors import InputError
from common.results import display_text as shown

_CHUNK = 1 << 20
_ZCHUNK = 1 << 16  # compressed bytes per step: deflate expands at most ~1000x, so steps stay under 70 MB
_MAX_HEADER = 1 << 20

Codec = Literal["raw", "gzip", "bzip2", "zlib"]

# NIfTI datatype code -> (bytes per voxel, numpy float kind to check for NaN/inf or None)
_NIFTI_TYPES = {2: (1, None), 4: (2, None), 8: (4, None), 16: (4, "f4"), 32: (8, None), 64: (8, "f8"),
                128: (3, None), 256: (1, None), 512: (2, None), 768: (4, None), 1024: (8, None), 1280: (8, None),
                1536: (16, None), 1792: (16, None), 2048: (32, None), 2304: (4, None)}
_NRRD_SIZES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                     "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                     "double"), 8),
}
_NRRD_CODECS: dict[str, Codec] = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
_MET_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


@dataclass
class Layout:
    """Where a volume's voxel bytes are and how many the header declares."""

    data_file: Path
    nbytes: int  # declared voxel bytes
    codec: Codec = "raw"
    file_offset: int = 0  # bytes before the (compressed) data in ``data_file``
    skip: int = 0  # bytes to skip in the (decompressed) data before the voxels; -1: voxels end the file (raw)
    check_finite: str | None = None  # numpy dtype (with byte order) whose NaN/inf voxels are refused


def check_volume_data(path: Path) -> None:
    """Refuse a NIfTI / NRRD / MetaImage file whose voxel data is shorter than its header declares, whose
    compressed stream is cut or corrupt, or (NIfTI float) which holds NaN/inf. Raises ``InputError`` naming it."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
        return
    if name.endswith((".nrrd", ".nhdr")):
        layout = _nrrd_layout(path)
    elif name.endswith((".mha", ".mhd")):
        layout = _metaimage_layout(path)
    else:
        return
    if layout is not None:
        _check_layout(path, layout)


# ---------------------------------------------------------------- streams


class _Stream:
    """Sequential reads over a chunk iterator (raw or decompressed bytes)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def chunks(self) -> Iterator[bytes]:
        if self._buf:
            yield self._buf
            self._buf = b""
        yield from self._chunks


def _chunks(f: BinaryIO, codec: Codec) -> Iterator[bytes]:
    """Bytes of ``f`` from its position, decoded as they come (a cut stream still yields what it holds, then
    raises EOFError). gzip: members follow one another until something else follows, as zlib's gzread reads them."""
    if codec == "raw":
        while chunk := f.read(_CHUNK):
            yield chunk
        return
    # wbits 31: gzip only; 47: zlib or gzip header, as MetaIO's inflateInit2(47)
    new = {"gzip": lambda: zlib.decompressobj(31), "zlib": lambda: zlib.decompressobj(47),
           "bzip2": bz2.BZ2Decompressor}[codec]
    d, pending = new(), b""
    while True:
        raw, pending = pending or f.read(_ZCHUNK), b""
        if not raw:
            raise EOFError("compressed stream ends before its end marker")
        if out := d.decompress(raw):
            yield out
        if d.eof:
            rest = d.unused_data or f.read(_ZCHUNK)
            if codec != "gzip" or not rest.startswith(b"\x1f\x8b"):
                return
            d, pending = new(), rest


class _Voxels:
    """Counts the voxel bytes of a stream (after ``skip``) and the NaN/inf values among them."""

    def __init__(self, layout: Layout) -> None:
        self.skip, self.need, self.got, self.bad, self.seen = max(layout.skip, 0), layout.nbytes, 0, 0, 0
        self.dtype = np.dtype(layout.check_finite) if layout.check_finite else None
        self._rest = b""

    def feed(self, chunk: bytes) -> None:
        if self.skip:
            cut = min(self.skip, len(chunk))
            chunk, self.skip = chunk[cut:], self.skip - cut
        take = chunk[: self.need - self.got]
        self.got += len(take)
        if self.dtype is not None and take:
            buf = self._rest + take
            k = len(buf) // self.dtype.itemsize * self.dtype.itemsize
            values = np.frombuffer(buf, dtype=self.dtype, count=k // self.dtype.itemsize)
            self.bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            self.seen += values.size
            self._rest = buf[k:]


def _truncated(path: Path, layout: Layout, held: int, note: str = "") -> InputError:
    where = "file" if layout.data_file == path else f"data file {shown(layout.data_file.name)}"
    return InputError(f"{shown(path)}: truncated: header declares {layout.nbytes} bytes of voxel data, {where} "
                      f"holds {max(held, 0)}{note}")


def _check_layout(path: Path, layout: Layout, stream: _Stream | None = None) -> None:
    """Compare ``layout`` with the data. ``stream``: the voxel stream when the caller has it open (NIfTI, where
    the header is inside it); else uncompressed data is judged by its size, compressed data is read through."""
    if not layout.data_file.is_file():
        raise InputError(f"{shown(path)}: data file {shown(layout.data_file.name)} not found")
    if stream is None and layout.codec == "raw":
        size = layout.data_file.stat().st_size
        # skip -1: the voxels are the file's last bytes
        start = max(size - layout.nbytes, layout.file_offset) if layout.skip < 0 else layout.file_offset + layout.skip
        if size - start < layout.nbytes:
            raise _truncated(path, layout, size - start)
        return
    if layout.skip < 0:
        return  # "voxels end the file" is defined for raw data only
    voxels = _Voxels(layout)
    try:
        if stream is not None:
            for chunk in stream.chunks():
                voxels.feed(chunk)
        else:
            with open(layout.data_file, "rb") as f:
                f.seek(layout.file_offset)
                for chunk in _chunks(f, layout.codec):
                    voxels.feed(chunk)
    except EOFError:
        raise _truncated(path, layout, voxels.got, " (compressed stream ends early)") from None
    except (OSError, zlib.error) as exc:
        raise InputError(f"{shown(path)}: corrupt compressed data ({exc})") from None
    if voxels.got < layout.nbytes:
        raise _truncated(path, layout, voxels.got)
    if voxels.bad:
        raise InputError(f"{shown(path)}: {voxels.bad} of {voxels.seen} voxels are NaN or infinite")


# ---------------------------------------------------------------- NIfTI


def _check_nifti(path: Path) -> None:
    with open(path, "rb") as f:
        codec: Codec = "gzip" if f.read(2) == b"\x1f\x8b" else "raw"
        f.seek(0)
        stream = _Stream(_chunks(f, codec))
        try:
            head = stream.read(4)
            endian = next((e for e in "<>" if len(head) == 4 and struct.unpack(e + "i", head)[0] in (348, 540)), None)
            if endian is None:
                return  # not NIfTI: ITK's error says so
            hdr_size = struct.unpack(endian + "i", head)[0]
            head += stream.read(hdr_size - 4)
        except EOFError:
            raise InputError(f"{shown(path)}: truncated: the compressed stream ends inside the NIfTI header") from None
        except (OSError, zlib.error) as exc:  # gzip magic, then no valid stream
            raise InputError(f"{shown(path)}: corrupt compressed data ({exc})") from None
        if len(head) < hdr_size:
            raise InputError(f"{shown(path)}: truncated: the file ends inside its {hdr_size}-byte NIfTI header")
        layout = _nifti_layout(path, head, endian, codec)
        if layout is None:
            return
        if codec == "raw" and layout.check_finite is None:
            _check_layout(path, layout)  # integers, uncompressed: the file size is enough
            return
        layout.skip -= hdr_size  # the stream is past the header: extensions, then voxels
        _check_layout(path, layout, stream)


def _nifti_layout(path: Path, head: bytes, e: str, codec: Codec) -> Layout | None:
    """NIfTI-1 (348-byte header) or NIfTI-2 (540) single-file layout; None for pairs (.hdr/.img) or odd dims."""
    if len(head) == 348:
        if head[344:348] != b"n+1\x00":
            return None
        dims = struct.unpack(e + "8h", head[40:56])
        datatype, bitpix = struct.unpack(e + "2h", head[70:74])
        offset = struct.unpack(e + "f", head[108:112])[0]
        if not np.isfinite(offset):
            return None
        vox_offset = max(int(offset), 352)
    else:
        if head[4:8] != b"n+2\x00":
            return None
        datatype, bitpix = struct.unpack(e + "2h", head[12:16])
        dims = struct.unpack(e + "8q", head[16:80])
        vox_offset = max(struct.unpack(e + "q", head[168:176])[0], 544)
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
        return None
    size, kind = _NIFTI_TYPES.get(datatype, (bitpix // 8, None))
    if size <= 0:
        return None
    n = math.prod(dims[1:ndim + 1]) * size
    return Layout(data_file=path, nbytes=n, codec=codec, skip=vox_offset, check_finite=e + kind if kind else None)


# ---------------------------------------------------------------- NRRD and MetaImage


def _header_lines(f: BinaryIO, stop: Callable[[str], bool]) -> list[str] | None:
    """Text lines of a header until ``stop(line)`` says it ended (that line included); None when too long."""
    lines, total = [], 0
    while True:
        raw = f.readline(_MAX_HEADER)
        total += len(raw)
        if total >= _MAX_HEADER:
            return None
        if not raw:
            return lines
        line = raw.decode("latin-1").rstrip("\r\n")
        lines.append(line)
        if stop(line):
            return lines


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _data_path(header: Path, value: str) -> Path:
    return Path(os.fsdecode(value.encode("latin-1"))) if os.path.isabs(value) else header.parent / os.fsdecode(
        value.encode("latin-1"))


def _nrrd_layout(path: Path) -> Layout | None:
    with open(path, "rb") as f:
        if f.read(4) != b"NRRD":
            return None
        f.readline()
        lines = _header_lines(f, lambda ln: ln == "")
        if lines is None:
            return None
        end = f.tell()
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    codec = _NRRD_CODECS.get(fields.get("encoding", "").lower())
    kind = fields.get("type", "").lower()
    size = _int(fields.get("blocksize"), 0) if kind == "block" else _NRRD_SIZES.get(kind, 0)
    try:
        sizes = [int(s) for s in fields.get("sizes", "").split()]
    except ValueError:
        return None
    if codec is None or size <= 0 or not sizes or min(sizes) < 1:
        return None
    datafile = fields.get("datafile")
    if datafile is not None and (datafile.upper().startswith("LIST") or len(datafile.split()) > 1):
        return None  # several data files
    data_file = _data_path(path, datafile) if datafile is not None else path
    offset = 0 if datafile is not None else end
    line_skip = _int(fields.get("lineskip"), 0)
    if line_skip > 0 and data_file.is_file():
        with open(data_file, "rb") as f:
            f.seek(offset)
            for _ in range(line_skip):
                f.readline()
            offset = f.tell()
    n = math.prod(sizes) * size
    return Layout(data_file=data_file, nbytes=n, codec=codec, file_offset=offset, skip=_int(fields.get("byteskip"), 0))


def _metaimage_layout(path: Path) -> Layout | None:
    with open(path, "rb") as f:
        lines = _header_lines(f, lambda ln: ln.split("=", 1)[0].strip().lower() == "elementdatafile")
        if lines is None:
            return None
        end = f.tell()
    fields = {k.strip().lower(): v.strip() for k, v in (ln.split("=", 1) for ln in lines if "=" in ln)}
    datafile = fields.get("elementdatafile")
    if datafile is None or fields.get("binarydata", "true").lower() == "false":
        return None
    if datafile.upper().startswith("LIST") or "%" in datafile:
        return None
    size = _MET_SIZES.get(fields.get("elementtype", "").upper().removesuffix("_ARRAY"), 0)
    try:
        dims = [int(s) for s in fields.get("dimsize", "").split()]
    except ValueError:
        return None
    if size <= 0 or not dims or min(dims) < 1:
        return None
    channels = max(_int(fields.get("elementnumberofchannels"), 1), 1)
    codec: Codec = "zlib" if fields.get("compresseddata", "false").lower() == "true" else "raw"
    n = math.prod(dims) * channels * size
    if datafile.upper() == "LOCAL":
        return Layout(data_file=path, nbytes=n, codec=codec, file_offset=end)
    header_size = _int(fields.get("headersize"), 0)
    return Layout(data_file=_data_path(path, datafile), nbytes=n, codec=codec,
                  file_offset=max(header_size, 0), skip=-1 if header_size == -1 else 0)
