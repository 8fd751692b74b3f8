"""Volume files checked against their headers (medical3d.integrity): cut, corrupt and odd-but-valid files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from common.errors import InputError
from medical3d.integrity import check_volume_data
from medical3d.io import read_study

ARR = np.random.default_rng(0).integers(0, 1000, (12, 14, 16)).astype(np.int16)  # z y x: 2688 voxels, 5376 bytes


def _nifti2(arr: np.ndarray) -> bytes:
    """A NIfTI-2 single file (540-byte header, 4-byte extension flag, int16 voxels), little endian."""
    h = bytearray(540)
    struct.pack_into("<i8shh", h, 0, 540, b"n+2\0\r\n\x1a\n", 4, 16)
    struct.pack_into("<8q", h, 16, 3, *reversed(arr.shape), 1, 1, 1, 1)
    struct.pack_into("<4d", h, 104, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<qd", h, 168, 544, 1.0)
    return bytes(h) + b"\0" * 4 + arr.tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_nifti2_is_measured_against_its_header(tmp_path, compress):
    data = _nifti2(ARR)
    path = tmp_path / ("n2.nii.gz" if compress else "n2.nii")
    path.write_bytes(gzip.compress(data) if compress else data)
    check_volume_data(path)  # whole: nothing to say
    cut = data[: 544 + 4000]
    path.write_bytes(gzip.compress(cut) if compress else cut)
    with pytest.raises(InputError, match=r"n2\.nii(\.gz)?: truncated: header declares 5376 bytes of voxel data, "
                                         r"file holds 4000$"):
        check_volume_data(path)


def test_gzip_stream_cut_or_corrupt_is_refused_and_multi_member_is_whole(tmp_path):
    path = tmp_path / "s.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(ARR), str(path), True)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]) + b"\0\0trailing junk")
    check_volume_data(path)  # two members and trailing junk: what zlib's gzread (ITK) reads too
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_study(path)[0]), ARR)
    good = gzip.compress(raw)
    path.write_bytes(good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:])  # CRC32 of the trailer broken
    with pytest.raises(InputError, match=r"s\.nii\.gz: corrupt compressed data \(.*incorrect data check"):
        check_volume_data(path)
    path.write_bytes(good[:-4])  # every voxel there, the stream's end not
    with pytest.raises(InputError, match=r"file holds 5376 \(compressed stream ends early\)"):
        check_volume_data(path)
    path.write_bytes(good[:100])
    with pytest.raises(InputError, match=r"s\.nii\.gz: truncated: the compressed stream ends inside the NIfTI header"):
        read_study(path)


def test_detached_data_file_missing_or_at_the_end_of_a_larger_file(tmp_path):
    header = tmp_path / "s.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(ARR), str(header))
    (tmp_path / "s.raw").unlink()
    with pytest.raises(InputError, match=r"s\.mhd: data file s\.raw not found"):
        read_study(header)
    nhdr = tmp_path / "e.nhdr"
    nhdr.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 16 14 12\nendian: little\nencoding: raw\n"
                    "byte skip: -1\ndata file: e.dat\n")
    (tmp_path / "e.dat").write_bytes(b"preamble of any length" + ARR.tobytes())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_study(nhdr)[0]), ARR)
    (tmp_path / "e.dat").write_bytes(ARR.tobytes()[:-2])
    with pytest.raises(InputError, match=r"e\.nhdr: truncated: header declares 5376 bytes of voxel data, data file "
                                         r"e\.dat holds 5374"):
        read_study(nhdr)


def test_files_it_does_not_understand_are_left_to_itk(tmp_path):
    for name, content in (("a.nii.gz", b"not gzip, not nifti"), ("b.nrrd", b"NRRD0004\nencoding: ascii\n\n1 2"),
                          ("c.mha", b"NDims = 3\nElementDataFile = LIST\n"), ("d.nii", b"")):
        (tmp_path / name).write_bytes(content)
        check_volume_data(tmp_path / name)
        with pytest.raises(InputError, match="cannot read as an image"):
            read_study(tmp_path / name)
