"""The errors for a path that is not a dataset, saying what it holds instead.

:func:`~npyseq.open_shards` given a folder without a manifest says whether it
is a write that did not finish (:class:`IncompleteDatasetError`: run the same
conversion again), a folder above dataset folders (named, to open one of
them), or neither; given a file, what to do with it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re

from npyseq.errors import DatasetNotFoundError, IncompleteDatasetError
from npyseq.format.manifest import MANIFEST_NAME
from npyseq.storage.files import Folder

__all__ = ["no_manifest_error", "not_a_folder_error"]

# What a write that did not finish leaves in a dataset folder (see storage/ownership.py):
# its lock file and temporary files at the top, shard files in array folders.
_WRITE_TRACE_RE = re.compile(r"^(\.npyseq\.lock|.*\.partial(\.tmp)?)$")
_SHARD_FILE_RE = re.compile(r"^\d{6,}(\.offsets)?\.npy(\.partial)?$")
_MAX_NAMED = 5  # dataset folders named in an error message
_MAX_SCANNED = 1000  # folders looked into when searching for datasets inside a folder


def no_manifest_error(folder: Folder) -> DatasetNotFoundError:
    """The error for a folder without a manifest, saying what the folder holds instead.

    A write that did not finish (its lock or temporary files are there, or
    shard files, or only empty array folders), a folder above dataset
    folders (named, up to two levels deep), or neither.
    """
    root = folder.root
    top = list(os.scandir(folder.fd))
    subfolders = sorted(e.name for e in top if e.is_dir())
    if subfolders and any(_WRITE_TRACE_RE.match(e.name) for e in top if not e.is_dir()):
        return _incomplete(root)
    inside = _datasets_inside(root, subfolders)
    if inside:
        named = ", ".join(inside[:_MAX_NAMED])
        if len(inside) > _MAX_NAMED:
            named += f" and {len(inside) - _MAX_NAMED} more"
        return DatasetNotFoundError(
            f"{root}: not an npyseq dataset ({MANIFEST_NAME} not found), but dataset folders are "
            f"inside it: {named}. Open one of those, e.g. {os.path.join(root, inside[0])}"
        )
    shards, empty = False, True
    for name in subfolders[:_MAX_SCANNED]:
        with _scandir(os.path.join(root, name)) as entries:
            for e in itertools.islice(entries, 16):
                empty = False
                shards = shards or bool(_SHARD_FILE_RE.match(e.name))
        if shards:
            break
    if subfolders and (shards or empty):
        return _incomplete(root)
    return DatasetNotFoundError(
        f"{root}: not an npyseq dataset ({MANIFEST_NAME} not found"
        + (", nor in the folders inside it, two levels down" if subfolders else "")
        + f"); give the folder that holds {MANIFEST_NAME}, or make a dataset with "
        "npyseq.write_shards or `npyseq convert`"
    )


def not_a_folder_error(root: str) -> DatasetNotFoundError:
    what = "is a file, not a dataset folder" if os.path.isfile(root) else "is not a folder"
    return DatasetNotFoundError(
        f"{root}: {what}; open_shards takes the folder that holds "
        f"{MANIFEST_NAME}. A .npy file becomes a dataset with npyseq.write_shards(folder, "
        "{name: path}) or `npyseq convert FILE -o FOLDER`"
    )


def _incomplete(root: str) -> IncompleteDatasetError:
    return IncompleteDatasetError(
        f"{root}: incomplete dataset: shard folders exist but {MANIFEST_NAME} does not. "
        "A conversion was interrupted; run it again to finish it (complete shards are kept)."
    )


def _datasets_inside(root: str, subfolders: list[str]) -> list[str]:
    """Folders one or two levels below ``root`` that hold a manifest, relative to it, sorted."""
    found, scanned = [], 0
    level = [name for name in subfolders if ".npyseq-" not in name]  # not a writer's staging folder
    for depth in (1, 2):
        below = []
        for rel in level:
            scanned += 1
            if scanned > _MAX_SCANNED:
                return sorted(found)
            path = os.path.join(root, rel)
            if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
                found.append(rel)
            elif depth == 1:
                with _scandir(path) as entries:
                    below.extend(os.path.join(rel, e.name) for e in entries
                                 if e.is_dir() and ".npyseq-" not in e.name)
        level = sorted(below)
    return sorted(found)


def _scandir(path: str):
    """``os.scandir(path)``, or nothing for a folder that cannot be read."""
    try:
        return os.scandir(path)
    except OSError:
        return contextlib.nullcontext(iter(()))
