"""The ``npyseq`` command: ``convert``, ``info`` and ``verify``.

A thin layer over the library; it never imports Keras, so it starts at once.

    npyseq convert x.npy y.npy -o data/train --shard-size 256MB
    npyseq convert arrays.npz -o data/train
    npyseq convert images.bin --dtype uint8 --shape 32,32,3 --offset 16 -o data/img
    npyseq convert labels.npy --ragged tokens values.npy offsets.npy -o data/text
    npyseq convert data.h5 -o data/train             (every dataset at the root; data.h5:/g/x: one)
    npyseq convert store.zarr -o data/train          (each array of a group; store.zarr:/x: one)
    npyseq convert data.h5 -o /shared/train --scheduler tcp://host:8786
    npyseq info data/train
    npyseq verify data/train

Output: a progress bar on stderr, and a one-line summary (``wrote ...``,
``OK: ...``) on stdout; ``-q``/``--quiet`` hides the bar, ``-qq``/``--silent``
the summary too. Errors are one line on stderr (exit 1). A closed pipe
(``npyseq info DIR | head -1``) ends the command quietly with exit status 141,
as for a program killed by ``SIGPIPE``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import zipfile
from typing import Sequence

import numpy as np

from npyseq import __version__
from npyseq.errors import NpyseqError
from npyseq.format import npy
from npyseq.format.limits import MAX_COUNT
from npyseq.storage.dataset import open_shards
from npyseq.arguments import short_repr
from npyseq.storage.protocol import DEFAULT_SHARD_SIZE, check_count, parse_size
from npyseq.storage.ragged_sources import RaggedSource
from npyseq.storage.cluster import connect
from npyseq.storage.containers import open_container
from npyseq.storage.signatures import raw_refusal, sniff
from npyseq.storage.sources import NpzMember, RawSource
from npyseq.storage.writer import MAX_JOBS, write_shards


def _plural(n: int, thing: str, things: str | None = None) -> str:
    """``"1 shard"``, ``"2 shards"``: a count and the word in the number it takes."""
    return f"{n} {thing if n == 1 else things or thing + 's'}"


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="count", default=0,
                        help="no progress bar; -qq: no summary line either")
    parser.add_argument("--silent", action="store_const", const=2, dest="quiet",
                        help="the same as -qq: print nothing but errors")


def _parse_shape(text: str) -> tuple[int, ...]:
    text = text.strip().strip("()[]")
    if not text:
        return ()
    try:
        shape = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape must be comma-separated ints like 32,32,3, got {text!r}")
    if any(d < 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--shape entries must be non-negative, got {text!r}")
    if any(d > MAX_COUNT for d in shape):
        raise argparse.ArgumentTypeError(f"--shape entries must be at most 2**62, got {short_repr(text)}")
    return shape


def _parse_dtype(text: str) -> np.dtype:
    """A numpy dtype name, or an ml_dtypes one such as bfloat16."""
    try:
        return np.dtype(text)
    except TypeError:
        import ml_dtypes

        if isinstance(getattr(ml_dtypes, text, None), type):
            return np.dtype(getattr(ml_dtypes, text))
        raise NpyseqError(f"--dtype {text!r} is not a numpy or ml_dtypes dtype (e.g. float32, bfloat16)") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="npyseq", description="Sharded .npy datasets for Keras.")
    p.add_argument("--version", action="version", version=f"npyseq {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert .npy, .npz or raw binary files into a sharded dataset")
    c.add_argument("sources", nargs="*", metavar="SRC",
                   help=".npy files, .npz archives, HDF5 files (FILE or FILE:/group/name), Zarr stores "
                        "(STORE or STORE:/path), or raw binary files (with --dtype)")
    c.add_argument("--ragged", nargs=3, action="append", default=[], metavar=("NAME", "VALUES", "OFFSETS"),
                   help="a ragged array (rows of different lengths) from two .npy files: all rows' "
                        "values one after another, and rows + 1 offsets (0, ..., len(values)); repeatable")
    c.add_argument("--ragged-lengths", nargs=3, action="append", default=[],
                   metavar=("NAME", "VALUES", "LENGTHS"),
                   help="like --ragged, with one length per row instead of offsets")
    c.add_argument("-o", "--output", required=True, metavar="OUT", help="dataset folder to write")
    c.add_argument("--name", action="append", default=[], metavar="NAME",
                   help="array name, once per array in order (default: file stem / npz member)")
    c.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE, help="largest shard, e.g. 64MB, 1GiB (default %(default)s)")
    c.add_argument("--rows-per-shard", type=int, default=None, help="rows per shard instead of --shard-size")
    c.add_argument("--jobs", type=int, default=None, help="shards written at once (default: CPUs, at most 4)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset (only one npyseq wrote: a folder holding other "
                        "files is refused)")
    _add_quiet(c)
    c.add_argument("--dtype", default=None, help="dtype of raw binary sources, e.g. float32")
    c.add_argument("--shape", type=_parse_shape, default=(), help="per-row shape of raw sources, e.g. 32,32,3")
    c.add_argument("--offset", type=int, default=0, help="bytes to skip at the start of raw sources")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="write the shards on a Dask cluster, e.g. tcp://host:8786 (the output folder must be "
                        "on a file system its workers share)")

    i = sub.add_parser("info", help="describe a dataset")
    i.add_argument("dataset", metavar="DIR")

    v = sub.add_parser("verify", help="recompute every shard checksum")
    v.add_argument("dataset", metavar="DIR")
    _add_quiet(v)
    return p


def _expand_sources(args) -> list[tuple[str, object]]:
    """(default name, source) for every array the sources hold."""
    out = []
    for src in args.sources:
        stem = os.path.splitext(os.path.basename(src))[0]
        inside = open_container(src)  # an HDF5 file, a Zarr store: its arrays
        if inside is not None:
            out.extend(inside)
            continue
        if not os.path.isfile(src):
            raise NpyseqError(f"{src}: no such file")
        fmt = sniff(src)
        if src.endswith(".npz") or fmt == "npz":
            try:
                with zipfile.ZipFile(src) as z:
                    members = [m for m in z.namelist() if m.endswith(".npy")]
            except zipfile.BadZipFile as e:
                raise NpyseqError(f"{src}: not a valid .npz archive ({e})") from None
            if not members:
                raise NpyseqError(f"{src}: the .npz archive holds no .npy members")
            out.extend((m[:-4], NpzMember(src, m)) for m in members)
        elif src.endswith(".npy") or fmt == "npy" or src.lower().endswith((".csv", ".tsv")):
            out.append((stem, src))  # write_shards says what to do with a CSV file
        elif fmt is not None:  # an archive, a compressed file: never read as raw rows
            raise NpyseqError(raw_refusal(src, fmt, cli=True))
        elif args.dtype is not None:
            out.append((stem, RawSource(src, _parse_dtype(args.dtype), args.shape, args.offset)))
        else:
            raise NpyseqError(
                f"{src}: not a .npy or .npz file; for raw binary data give --dtype "
                "(and --shape, --offset)"
            )
    if args.name:
        if len(args.name) != len(out):
            raise NpyseqError(
                f"--name given {_plural(len(args.name), 'time')} but the sources hold "
                f"{_plural(len(out), 'array')} ({', '.join(n for n, _ in out)})"
            )
        out = [(name, src) for name, (_, src) in zip(args.name, out)]
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise NpyseqError(f"array names must be unique, got {names}; use --name")
    return out


def _check_numbers(args) -> None:
    """The numeric options, checked like the library checks its arguments, named as typed."""
    if args.rows_per_shard is not None:
        check_count(args.rows_per_shard, "--rows-per-shard")
    else:
        parse_size(args.shard_size, "--shard-size")
    if args.jobs is not None:
        check_count(args.jobs, "--jobs", maximum=MAX_JOBS)
    check_count(args.offset, "--offset", minimum=0, what="a non-negative int")


def _convert(args) -> int:
    if not args.output.strip():
        raise NpyseqError(
            f"-o/--output is empty ({args.output!r}); give the folder to write the dataset to. An "
            "empty path would mean the current folder (and, with --overwrite, all of it): pass -o . "
            "to write there on purpose."
        )
    _check_numbers(args)
    arrays = dict(_expand_sources(args))
    for option, kind in (("--ragged", "offsets"), ("--ragged-lengths", "lengths")):
        for name, values, bounds in getattr(args, option[2:].replace("-", "_")):
            if name in arrays:
                raise NpyseqError(f"{option} {name}: array names must be unique; {name!r} is given twice")
            for path in (values, bounds):
                if not os.path.isfile(path):
                    raise NpyseqError(f"{option} {name}: {path}: no such file")
            arrays[name] = RaggedSource(values, **{kind: bounds})
    if not arrays:
        raise NpyseqError("nothing to convert: give source files and/or --ragged NAME VALUES OFFSETS")
    def write():
        return write_shards(args.output, arrays, args.shard_size, rows=args.rows_per_shard, jobs=args.jobs,
                            progress=args.quiet == 0, overwrite=args.overwrite)

    if args.scheduler is None:
        ds = write()
    else:  # the shard jobs run on the cluster's workers, through joblib's dask backend
        import joblib

        with connect(args.scheduler), joblib.parallel_config(backend="dask"):
            ds = write()
    if args.quiet < 2:
        print(f"wrote {ds.path}: {_plural(len(ds), 'row')}, {_plural(len(ds.names), 'array')}, "
              f"{_plural(ds.num_shards, 'shard')} per array, {_human(ds.nbytes)}")
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def _check_folder(path: str, command: str) -> None:
    """Refuse a file where a dataset folder is expected, saying what the command takes."""
    if os.path.exists(path) and not os.path.isdir(path):
        source = path if path.endswith((".npy", ".npz")) else "FILE"
        raise NpyseqError(
            f"{path}: is a file, not a dataset folder; `npyseq {command}` takes a dataset folder "
            f"(the one holding manifest.json); `npyseq convert {source} -o DIR` makes one"
        )


def _info(args) -> int:
    _check_folder(args.dataset, "info")
    ds = open_shards(args.dataset)
    m = ds.manifest
    print(f"dataset   {ds.path}")
    print(f"format    npyseq v{m.version}, manifest {npy.CHECKSUM_ALGORITHM}:{ds.checksum}")
    print(f"rows      {len(ds)}")
    rows = m.shard_rows
    if rows:
        each = f"{min(rows)}-{max(rows)} rows" if min(rows) != max(rows) else _plural(rows[0], "row")
        print(f"shards    {m.num_shards} per array, {each} each")
    else:
        print("shards    0")
    print(f"bytes     {m.nbytes} ({_human(m.nbytes)})")
    print("arrays")
    width = max(len(n) for n in ds.names)
    for name in ds.names:
        a, info = ds[name], m.arrays[name]
        stored = "" if info.logical_dtype is None else f" (stored as {info.dtype})"
        size = sum(s.bytes for s in info.files)
        shape = (f"ragged, rows of (n,) + {info.shape}, {a.num_values} values" if info.ragged
                 else f"row shape {a.shape[1:]}")
        print(f"  {name:<{width}}  {str(a.dtype) + stored:<30} {shape:<26} {_human(size)}")
    return 0


def _verify(args) -> int:
    from tqdm.auto import tqdm

    _check_folder(args.dataset, "verify")
    ds = open_shards(args.dataset, verify="none")
    total = ds.nbytes
    with tqdm(total=total, unit="B", unit_scale=True, desc="npyseq verify", disable=args.quiet > 0) as bar:
        bad = ds.verify(progress=bar)
    n = sum(len(a.files) for a in ds.manifest.arrays.values())
    if bad:
        for line in bad:
            print(f"BAD {line}")
        print(f"{len(bad)} of {_plural(n, 'shard')} {'is' if len(bad) == 1 else 'are'} bad")
        return 1
    if args.quiet < 2:
        print(f"OK: {_plural(n, 'shard')}, {_human(total)}, "
              f"{'its checksum matches' if n == 1 else 'all checksums match'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"convert": _convert, "info": _info, "verify": _verify}[args.command]
    try:
        code = command(args)
        sys.stdout.flush()  # so that a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except (NpyseqError, OSError, ValueError, TypeError, zipfile.BadZipFile) as e:
        print(f"npyseq {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        # write_shards says what was kept and that the same command resumes the conversion.
        detail = f": {e.args[0]}" if e.args and isinstance(e.args[0], str) else ""
        print(f"npyseq {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


def _stdout_closed() -> int:
    """The reader of stdout went away (``npyseq info DIR | head -1``): stop quietly.

    As the Python documentation recommends for SIGPIPE (the ``signal``
    module's notes): point stdout at devnull, so that flushing it at exit
    does not fail again. The exit status is what a shell shows for a program
    killed by SIGPIPE (128 + 13), as ``cat`` or ``ls`` would end.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout has no descriptor (captured)
        pass
    return 128 + getattr(signal, "SIGPIPE", 13)


if __name__ == "__main__":
    sys.exit(main())
