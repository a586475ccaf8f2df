"""What a file is, by its first bytes: the signatures npyseq recognises before reading
a file as raw binary rows, or as a ``.npy`` file.

A raw conversion (``npyseq convert FILE --dtype ...``, :class:`npyseq.RawSource`)
reads every byte as data. Given an HDF5 file, a Zarr store, an archive or a
compressed file it would "succeed" and write its bytes as numbers; npyseq
refuses it instead, naming the format and what converts it (:func:`raw_refusal`).
The ``.npy`` reader names what a file that is not ``.npy`` looks like
(:func:`not_npy_message`) instead of numpy's advice to unpickle it.

>>> sniff("data.h5")
'hdf5'
"""

from __future__ import annotations

import os

__all__ = ["FORMATS", "sniff", "raw_refusal", "not_npy_message"]

NPY_MAGIC = b"\x93NUMPY"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZARR_FILES = ("zarr.json", ".zarray", ".zgroup")

# format: (what it is, in a sentence; how to convert it with the command line; from Python)
FORMATS = {
    "hdf5": ("an HDF5 file",
             "convert its datasets with `npyseq convert {path} -o OUT` (every dataset at its root) or "
             "`npyseq convert {path}:/group/name -o OUT` (one)",
             "pass its datasets, e.g. {{'x': h5py.File({path!r})['x']}}"),
    "zarr": ("a Zarr store",
             "convert it with `npyseq convert {path} -o OUT` (each array of a group) or "
             "`npyseq convert {path}:/path/to/array -o OUT` (one)",
             "pass its arrays, e.g. {{'x': zarr.open_array({path!r})}}"),
    "npz": ("a .npz archive (a zip of .npy files)",
            "convert it with `npyseq convert {path} -o OUT`",
            "pass its members as npyseq.NpzMember({path!r}, 'x.npy')"),
    "zip": ("a zip archive", "unpack it (`unzip {path}`) and convert the files it holds",
            "unpack it (`unzip {path}`) and convert the files it holds"),
    "npy": ("a .npy file", "convert it without --dtype: `npyseq convert {path} -o OUT`",
            "pass its path as it is: {{'x': {path!r}}}"),
    "gzip": ("a gzip-compressed file", "decompress it first (`gunzip -k {path}`) and convert the result",
             "decompress it first (`gunzip -k {path}`) and convert the result"),
    "bz2": ("a bzip2-compressed file", "decompress it first (`bunzip2 -k {path}`) and convert the result",
            "decompress it first (`bunzip2 -k {path}`) and convert the result"),
    "xz": ("an xz-compressed file", "decompress it first (`unxz -k {path}`) and convert the result",
           "decompress it first (`unxz -k {path}`) and convert the result"),
    "zstd": ("a zstd-compressed file", "decompress it first (`unzstd {path}`) and convert the result",
             "decompress it first (`unzstd {path}`) and convert the result"),
    "tar": ("a tar archive", "unpack it (`tar xf {path}`) and convert the files it holds",
            "unpack it (`tar xf {path}`) and convert the files it holds"),
    "7z": ("a 7z archive", "unpack it (`7z x {path}`) and convert the files it holds",
           "unpack it (`7z x {path}`) and convert the files it holds"),
}

_PREFIXES = (
    (NPY_MAGIC, "npy"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip archive
    (b"\x1f\x8b\x08", "gzip"),  # deflate, the only method gzip has
    *((b"BZh%d" % level, "bz2") for level in range(1, 10)),  # and the block size
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
)


def is_zarr(path: str) -> bool:
    """A folder holding a Zarr array or group (v3 ``zarr.json``, v2 ``.zarray``/``.zgroup``)."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in ZARR_FILES)


def _hdf5_at(f, size: int) -> bool:
    """The HDF5 superblock is at byte 0, or after a user block of 512, 1024, 2048, ... bytes."""
    at = 0
    while at + len(HDF5_MAGIC) <= size:
        f.seek(at)
        if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            return True
        at = 512 if at == 0 else at * 2
    return False


def sniff(path: str | os.PathLike) -> str | None:
    """The format of ``path`` (a key of :data:`FORMATS`), or None for none npyseq recognises.

    A zip archive whose members are all ``.npy`` files is ``"npz"``.
    """
    path = os.fspath(path)
    if is_zarr(path):
        return "zarr"
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            found = next((fmt for magic, fmt in _PREFIXES if head.startswith(magic)), None)
            if found is None and head[257:262] == b"ustar":
                found = "tar"
            if found is None and _hdf5_at(f, os.fstat(f.fileno()).st_size):
                found = "hdf5"
    except (IsADirectoryError, FileNotFoundError, PermissionError):
        return None
    if found == "zip":
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "zip"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
    return found


def raw_refusal(path: str, fmt: str, cli: bool) -> str:
    """Why ``path`` (of format ``fmt``) is not read as raw binary data, and what converts it."""
    what, command, python = FORMATS[fmt]
    advice = (command if cli else python).format(path=path)
    given = "--dtype" if cli else "RawSource"
    return (f"{path}: is {what}, not raw binary data; {given} would read its bytes (headers and all) "
            f"as numbers, so npyseq refuses it: {advice}")


def not_npy_message(name: str, path: str, fmt: str | None) -> str:
    """What the ``.npy`` reader says of a source file that does not start with the .npy magic."""
    if fmt is None or fmt == "npy":
        return (f"array {name!r}: {path}: is not a .npy file (it does not start with the .npy magic "
                f"\\x93NUMPY); for raw binary data pass npyseq.RawSource({path!r}, dtype, shape)")
    what, _, python = FORMATS[fmt]
    return f"array {name!r}: {path}: is {what}, not a .npy file; {python.format(path=path)}"
