"""The arrays of an HDF5 file or a Zarr store, as ``npyseq convert`` names them.

``data.h5`` is every dataset at the file's root (they must have the same
number of rows), ``data.h5:/group/images`` one dataset (named by its last
component); ``store.zarr`` is each array of a group (or the one array of an
array store), ``store.zarr:/path`` one array. What a path is comes from its
signature (:mod:`npyseq.storage.signatures`), not from its extension.
"""

from __future__ import annotations

import os
from typing import Any

from npyseq.errors import InvalidArgumentError
from npyseq.storage.signatures import is_zarr, sniff

__all__ = ["split_source", "open_container"]

_EXTRAS = {"hdf5": ("h5py", "hdf5", "an HDF5 file"), "zarr": ("zarr", "zarr", "a Zarr store")}


def split_source(spec: str) -> tuple[str, str | None]:
    """``"data.h5:/g/x"`` -> ``("data.h5", "/g/x")``; a path that exists as given is whole."""
    if os.path.exists(spec):
        return spec, None
    at = spec.find(":/")
    while at > 0:
        if os.path.exists(spec[:at]):
            return spec[:at], spec[at + 1:]
        at = spec.find(":/", at + 1)
    return spec, None


def _need(fmt: str, path: str):
    package, extra, what = _EXTRAS[fmt]
    try:
        return __import__(package)
    except ImportError:
        raise InvalidArgumentError(
            f"{path}: is {what}; reading it needs the {package} package, which is not installed; "
            f"install it with pip install 'npyseq[{extra}]'") from None


def _same_rows(path: str, found: list[tuple[str, Any]], what: str, pick: str) -> list[tuple[str, Any]]:
    if not found:
        raise InvalidArgumentError(f"{path}: holds no {what}s with a first axis of rows; name one: {pick}")
    rows = {name: int(a.shape[0]) for name, a in found}
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"{name} ({n} rows)" for name, n in rows.items())
        raise InvalidArgumentError(
            f"{path}: its {what}s have different numbers of rows: {listed}; a dataset's arrays all have the "
            f"same rows: convert those that do by naming each, {pick}")
    return found


def _hdf5(path: str, inner: str | None) -> list[tuple[str, Any]]:
    h5py = _need("hdf5", path)
    f = h5py.File(path, "r")  # open until the process ends; workers open it again by path
    if inner is not None:
        obj = f.get(inner)
        if not isinstance(obj, h5py.Dataset):
            names = sorted(f.keys())
            raise InvalidArgumentError(
                f"{path}:{inner}: {'is a group' if obj is not None else 'no such dataset'}; the file's root "
                f"holds {names}; name a dataset, e.g. {path}:/{names[0] if names else 'name'}")
        return [(inner.rstrip("/").rpartition("/")[2], obj)]
    found = [(name, obj) for name, obj in f.items() if isinstance(obj, h5py.Dataset) and obj.shape]
    return _same_rows(path, found, "dataset", f"`npyseq convert {path}:/name1 {path}:/name2 -o OUT`")


def _zarr(path: str, inner: str | None) -> list[tuple[str, Any]]:
    zarr = _need("zarr", path)
    try:
        obj = zarr.open(store=path, path=(inner or "").strip("/"), mode="r")
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise InvalidArgumentError(f"{path}:{inner}: no such Zarr array or group ({e})") from None
    if isinstance(obj, zarr.Array):
        name = inner.rstrip("/").rpartition("/")[2] if inner else os.path.splitext(
            os.path.basename(os.path.normpath(path)))[0]
        return [(name, obj)]
    found = sorted((name, a) for name, a in obj.arrays() if a.shape)
    where = f"{path}:{inner}" if inner else path
    return _same_rows(where, found, "array", f"`npyseq convert {path}:/name1 {path}:/name2 -o OUT`")


def open_container(spec: str) -> list[tuple[str, Any]] | None:
    """``(default name, array)`` for every array ``spec`` names in an HDF5 file or a Zarr store,
    or None when ``spec`` is neither."""
    path, inner = split_source(spec)
    if is_zarr(path):
        return _zarr(path, inner)
    if os.path.isfile(path) and sniff(path) == "hdf5":
        return _hdf5(path, inner)
    return None
