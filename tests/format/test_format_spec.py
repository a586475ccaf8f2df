"""The format's specification (the docstring of npyseq/format/manifest.py) agrees with the code.

* the two JSON examples of the docstring parse (once their ``...`` are filled
  in as the text says) and round-trip;
* every constant the "Limits" section names has the value it states, and is
  enforced: a manifest at the limit parses, one just over it is a
  ``ManifestError`` naming the value;
* what "Compatibility" promises holds (unknown keys, version 2 without a
  ragged array, other checksum algorithms, the names a writer owns and what
  it deletes);
* the format package imports nothing of the layers above it.
"""

from __future__ import annotations

import ast
import copy
import functools
import glob
import json
import os
import re

import numpy as np
import pytest

import npyseq
from npyseq.errors import ForeignFilesError, InvalidArgumentError, ManifestError
from npyseq.format import dtypes, limits, manifest, npy

from _helpers import load_manifest_json, write_manifest_json

SPEC = manifest.__doc__
FORMAT_DIR = os.path.dirname(manifest.__file__)
FORMAT_MODULES = (limits, npy, dtypes, manifest)


def section(title: str) -> str:
    """The text of one section of the spec (underlined title to the next one)."""
    m = re.search(rf"^{re.escape(title)}\n-+\n(.*?)(?=^\S[^\n]*\n-+\n|\Z)", SPEC, re.S | re.M)
    assert m, f"the spec has no section {title!r}"
    return m.group(1)


def literal_block(after: str) -> str:
    """The indented ``::`` block that follows the line ending in ``after``."""
    lines = SPEC.split(after, 1)[1].splitlines()[2:]  # the rest of that line, then a blank one
    block = []
    for line in lines:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return "\n".join(block).strip()


def _ellipses_to_json(text: str) -> str:
    """The example's ``...`` as JSON: a placeholder string, to fill in."""
    text = text.replace('"xxh3_64:..."', '"xxh3_64:?"')
    text = re.sub(r",\s*\.\.\.\s*\]", "]", text)  # "more entries like the first"
    return text.replace("[...]", "[]")


def _entry(path: str, dtype: np.dtype, shape: tuple[int, ...], count: int, k: int) -> dict:
    """A file entry as the text describes it: ``bytes`` the header numpy writes plus
    ``count`` rows of data; an illustrative checksum."""
    size = len(npy.header_bytes(dtype, (count,) + shape)) + count * npy.row_bytes(dtype, shape)
    return {"path": path, "bytes": size, "checksum": f"xxh3_64:{k:016x}"}


def _fill(doc: dict) -> dict:
    """Every array's shards as the text describes them, entry ``k`` for shard ``k``. The
    entries the example shows must be exactly those (their checksums are illustrative)."""
    for name, spec in doc["arrays"].items():
        dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
        shown, spec["shards"] = spec["shards"], []
        for k, rows in enumerate(doc["shard_rows"]):
            if spec.get("ragged"):
                values = 1000 if k == 0 else 7 * k
                entry = {**_entry(f"{name}/{k:06d}.npy", dtype, shape, values, k), "values": values,
                         "offsets": _entry(f"{name}/{k:06d}.offsets.npy", np.dtype("<i8"), (), rows + 1, 100 + k)}
            else:
                entry = _entry(f"{name}/{k:06d}.npy", dtype, shape, rows, k)
            if k < len(shown):
                for documented, mine in ((shown[k], entry), (shown[k].get("offsets"), entry.get("offsets"))):
                    if documented is not None and documented["checksum"] == "xxh3_64:?":
                        documented["checksum"] = mine["checksum"]  # "..." in the text
                    elif documented is not None:
                        mine["checksum"] = documented["checksum"]
                assert shown[k] == entry, f"the spec's example of {name!r} shard {k} is not what the text says"
            spec["shards"].append(entry)
    return doc


def test_the_manifest_example_parses_and_round_trips():
    doc = _fill(json.loads(_ellipses_to_json(literal_block("UTF-8 JSON, one object::"))))
    m = manifest.Manifest.from_json(json.dumps(doc))
    assert (m.version, m.rows, m.shard_rows, m.names) == (1, 1000, (400, 400, 200), ["x", "y"])
    x = m.arrays["x"]
    assert (x.dtype, x.logical_dtype, x.shape, x.row_bytes) == (np.dtype("<u2"), "bfloat16", (32, 32, 3), 6144)
    assert x.shards[0] == manifest.ShardInfo("x/000000.npy", 2457728, "xxh3_64:5f1d0b3a9c1e2f40")
    assert dtypes.logical_dtype(x.dtype, x.logical_dtype).name == "bfloat16"
    assert json.loads(m.to_json()) == doc  # the example is exactly what npyseq writes
    assert manifest.Manifest.from_json(m.to_json()) == m


def test_the_ragged_example_parses_and_round_trips():
    ragged = json.loads("{" + _ellipses_to_json(literal_block("each shard is two ``.npy`` files::")) + "}")
    fixed = json.loads(_ellipses_to_json(literal_block("UTF-8 JSON, one object::")))
    doc = _fill({**fixed, "version": 2, "arrays": {**fixed["arrays"], **ragged}})
    m = manifest.Manifest.from_json(json.dumps(doc))
    tokens = m.arrays["tokens"]
    assert m.version == 2 and tokens.ragged and tokens.values == (1000, 7, 14)
    assert tokens.shards[0] == manifest.ShardInfo("tokens/000000.npy", 4128, "xxh3_64:0000000000000000")
    assert tokens.offsets[0] == manifest.ShardInfo("tokens/000000.offsets.npy", 3336, f"xxh3_64:{100:016x}")
    assert json.loads(m.to_json()) == doc
    assert manifest.Manifest.from_json(m.to_json()) == m


# --- Limits ---------------------------------------------------------------------------


def _stated_constants() -> dict[str, str]:
    """``{NAME: the value as the Limits section writes it}`` for every ````NAME = value````."""
    return dict(re.findall(r"``([A-Z_]+) = ([^`]+)``", section("Limits")))


def _constant(name: str):
    homes = [m for m in FORMAT_MODULES if name in vars(m) and m.__name__ in _defining_modules(name)]
    assert len(homes) == 1, f"{name} is defined in {[m.__name__ for m in homes]}, not one format module"
    return getattr(homes[0], name)


@functools.lru_cache(maxsize=None)
def _package_trees() -> dict[str, ast.Module]:
    """``{module name: its syntax tree}`` of every module of npyseq."""
    root = os.path.dirname(os.path.dirname(manifest.__file__))
    trees = {}
    for path in glob.glob(os.path.join(root, "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            trees["npyseq." + os.path.relpath(path, root)[:-3].replace(os.sep, ".")] = ast.parse(f.read(), path)
    return trees


def _defining_modules(name: str) -> set[str]:
    """The modules of npyseq that assign ``name`` at their top level (its homes)."""
    found = set()
    for module, tree in _package_trees().items():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.add(module)
    return found


def _doc(**arrays) -> dict:
    """A valid manifest document: one shard of ``rows`` rows per array given as
    ``name=(dtype, shape, rows)``; ``x`` (``<u2``, ``[3]``, 4 rows) if none."""
    arrays = arrays or {"x": ("<u2", [3], 4)}
    rows = next(iter(arrays.values()))[2]
    doc = {"format": "npyseq", "version": 1, "rows": rows, "shard_rows": [rows], "arrays": {}}
    for name, (dtype, shape, _) in arrays.items():
        nbytes = 128 + rows * np.dtype(dtype).itemsize * int(np.prod(shape, dtype=object))
        doc["arrays"][name] = {"dtype": dtype, "logical_dtype": None, "shape": shape, "shards": [
            {"path": f"{name}/000000.npy", "bytes": nbytes, "checksum": "xxh3_64:0123456789abcdef"}]}
    return doc


def _ragged_doc(dtype: str, values: int) -> dict:
    doc = _doc(t=("|u1", [], 1))
    doc["version"] = 2
    spec = doc["arrays"]["t"]
    spec.update(ragged=True, dtype=dtype)
    spec["shards"][0].update(bytes=limits.MAX_COUNT, values=values, offsets={
        "path": "t/000000.offsets.npy", "bytes": 144, "checksum": "xxh3_64:0"})
    return doc


def _with(doc: dict, *path_and_value) -> dict:
    *path, value = path_and_value
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def _renamed(doc: dict, name: str) -> dict:
    doc["arrays"] = {name: doc["arrays"].pop("x")}
    return doc


MAX = limits.MAX_COUNT
X0 = ("arrays", "x", "shards", 0)

# Each limit the Limits section states: (a manifest at the limit, one just over it,
# what the error says of the value).
AT_AND_OVER = {
    "MAX_COUNT": [
        (_doc(x=("<u2", [0], MAX)), _doc(x=("<u2", [0], MAX + 1)), f"rows must be in [0, 2**62], found {MAX + 1}"),
        (_doc(x=("<u2", [MAX, 0], 4)), _doc(x=("<u2", [MAX + 1, 0], 4)),
         f"array 'x' shape entry must be in [0, 2**62], found {MAX + 1}"),
        (_with(_doc(), *X0, "bytes", MAX), _with(_doc(), *X0, "bytes", MAX + 1),
         f"array 'x' shard 0 bytes must be in [0, 2**62], found {MAX + 1}"),
        (_with(_doc(x=("|u1", [MAX], 1)), *X0, "bytes", MAX), _doc(x=("<u2", [MAX // 2 + 1], 1)),
         f"array 'x' rows of shape ({MAX // 2 + 1},) are impossibly large: {MAX + 2} bytes each, more than 2**62"),
        (_ragged_doc("|u1", MAX), _ragged_doc("<u2", MAX // 2 + 1),
         f"array 't' shard 0 values ({MAX // 2 + 1}) are impossibly many: {MAX + 2} bytes, more than 2**62"),
    ],
    "MAX_ROW_DIMS": [
        (_doc(x=("<u2", [1] * 32, 4)), _doc(x=("<u2", [1] * 33, 4)),
         "array 'x' shape must be a list of at most 32 ints, found 33 entries"),
    ],
    "MAX_NAME_LENGTH": [
        (_renamed(_doc(), "n" * 128), _renamed(_doc(), "n" * 129),
         f"array name {'n' * 129!r:.80} is not allowed (a name is 1 to 128 ASCII letters, digits, '_', '-' "
         "or '.', not starting with '.'; this one has 129 characters)"),
    ],
    "MAX_PATH_LENGTH": [
        (_with(_doc(), *X0, "path", "x/" + "p" * 4094), _with(_doc(), *X0, "path", "x/" + "p" * 4095),
         f"shard path {'x/' + 'p' * 4095!r:.80} has 4097 characters, more than the 4096 a shard path may have"),
    ],
    "MAX_ALGORITHM_LENGTH": [
        (_with(_doc(), *X0, "checksum", "a" * 32 + ":0f"), _with(_doc(), *X0, "checksum", "a" * 33 + ":0f"),
         f"array 'x' shard 'x/000000.npy' checksum is malformed: {'a' * 33 + ':0f'!r} (36 characters; "
         "expected '<algorithm>:<hex digest>', 1-32 characters [a-z0-9_], ':', 1-128 lower-case hex digits)"),
    ],
    "MAX_DIGEST_LENGTH": [
        (_with(_doc(), *X0, "checksum", "xxh3_64:" + "f" * 128), _with(_doc(), *X0, "checksum", "xxh3_64:" + "f" * 129),
         f"array 'x' shard 'x/000000.npy' checksum is malformed: {'xxh3_64:' + 'f' * 129!r:.80} (137 characters"),
    ],
}
CASES = [(name, *case) for name, cases in AT_AND_OVER.items() for case in cases]


def test_every_constant_the_limits_name_has_the_stated_value_and_one_home():
    stated = _stated_constants()
    assert set(stated) == set(AT_AND_OVER) | {"MAX_MANIFEST_BYTES", "CHECKSUM_ALGORITHM"}, (
        "a limit the spec names has no test here, or the other way round")
    for name, text in stated.items():
        assert _constant(name) == eval(text, {}), f"the spec says {name} = {text}, the code {_constant(name)!r}"
    assert "``LOGICAL_DTYPES`` (:mod:`npyseq.format.dtypes`)" in section("Limits")
    assert _defining_modules("LOGICAL_DTYPES") == {"npyseq.format.dtypes"}


@pytest.mark.parametrize("name, at, over, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_limit_is_enforced(tmp_path, name, at, over, message):
    manifest.Manifest.from_json(json.dumps(at))  # at the limit: valid
    write_manifest_json(tmp_path, over)
    with pytest.raises(ManifestError, match=re.escape(f"{tmp_path / 'manifest.json'}: {message}")):
        manifest.read_manifest(tmp_path)


def test_a_manifest_over_max_manifest_bytes_is_not_parsed(tmp_path):
    """A (sparse) file one byte over the real limit; the limit itself is tested in test_manifest."""
    path = tmp_path / "manifest.json"
    with open(path, "wb") as f:
        f.truncate(limits.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ManifestError, match=re.escape(
            f"{path}: manifest is larger than {256 * 2**20} bytes; refusing to parse it")):
        manifest.read_manifest(tmp_path)


def test_the_listed_logical_dtypes_are_exactly_the_ones_npyseq_knows():
    text = " ".join(section("Limits").split("``LOGICAL_DTYPES``", 1)[1].split())
    listed = {}
    for width, names in re.findall(r"(\d) bytes?: ([^.]+)\.", text):
        listed.update({n.strip(): int(width) for n in names.split(",")})
    assert listed == dtypes.LOGICAL_DTYPES
    doc = _with(_doc(), "arrays", "x", "logical_dtype", "float7")
    with pytest.raises(ManifestError, match="array 'x': unknown logical_dtype 'float7'; npyseq knows bfloat16,"):
        manifest.Manifest.from_json(json.dumps(doc))


@pytest.mark.parametrize("where, value, message", [
    (("arrays", "x\n"), None, "array name 'x\\n' is not allowed"),
    (X0 + ("checksum",), "xxh3_64:0123456789abcdef\n", "checksum is malformed: 'xxh3_64:0123456789abcdef\\n'"),
])
def test_a_trailing_newline_does_not_pass_a_name_or_a_checksum(where, value, message):
    doc = _doc()
    if value is None:
        doc = _renamed(doc, where[1])
    else:
        _with(doc, *where, value)
    with pytest.raises(ManifestError, match=re.escape(message)):
        manifest.Manifest.from_json(json.dumps(doc))
    assert not limits.is_array_name("x\n") and limits.is_array_name("x")


def test_the_writers_refuse_an_array_name_with_a_trailing_newline(tmp_path):
    message = re.escape("array names must be 1-128 letters, digits, '_', '-' or '.', not starting with '.'; "
                        "got 'x\\n'")
    with pytest.raises(InvalidArgumentError, match=message):
        npyseq.write_shards(tmp_path / "ds", {"x\n": np.arange(3)}, progress=False)
    with pytest.raises(InvalidArgumentError, match=message):
        with npyseq.ShardWriter(tmp_path / "w", rows=2) as w:
            w.append(**{"x\n": np.arange(3)})
    assert not (tmp_path / "ds").exists()


def test_a_path_is_unique_over_all_arrays_and_offsets_files():
    doc = _ragged_doc("|u1", 10)
    doc["arrays"]["t"]["shards"][0]["bytes"] = 200
    doc["arrays"]["y"] = _doc(y=("|u1", [], 1))["arrays"]["y"]
    doc["arrays"]["y"]["shards"][0]["path"] = "t/000000.offsets.npy"
    with pytest.raises(ManifestError, match="shard path 't/000000.offsets.npy' is listed twice"):
        manifest.Manifest.from_json(json.dumps(doc))


# --- Compatibility --------------------------------------------------------------------


def test_unknown_keys_are_ignored_at_every_level():
    plain = _ragged_doc("|u1", 10)
    noisy = copy.deepcopy(plain)
    noisy["created_by"] = {"tool": "someone else", "version": 9}
    noisy["arrays"]["t"]["description"] = "token ids"
    noisy["arrays"]["t"]["shards"][0]["compression"] = None
    noisy["arrays"]["t"]["shards"][0]["offsets"]["note"] = [1, 2]
    assert manifest.Manifest.from_json(json.dumps(noisy)) == manifest.Manifest.from_json(json.dumps(plain))


def test_version_2_without_a_ragged_array_is_the_same_dataset_written_back_as_1():
    m = manifest.Manifest.from_json(json.dumps(_with(_doc(), "version", 2)))
    assert m == manifest.Manifest.from_json(json.dumps(_doc()))
    assert m.version == 1 and json.loads(m.to_json())["version"] == 1


def test_another_checksum_algorithm_is_valid_but_not_verifiable(tmp_path):
    m = manifest.Manifest.from_json(json.dumps(_with(_doc(), *X0, "checksum", "sha256:" + "ab" * 32)))
    assert m.arrays["x"].shards[0].checksum == "sha256:" + "ab" * 32
    assert not npy.can_verify(m.arrays["x"].shards[0].checksum)
    ds = npyseq.write_shards(tmp_path / "ds", {"x": np.arange(5)}, rows=2, progress=False)
    checksums = [s.checksum for s in ds.manifest.arrays["x"].shards]
    assert all(npy.can_verify(c) and c.startswith(npy.CHECKSUM_ALGORITHM + ":") for c in checksums)


@pytest.mark.parametrize("name", ["LOCK_NAME", "PARTIAL_SUFFIX", "TMP_SUFFIX", "STAGING_SUFFIX", "OLD_SUFFIX"])
def test_the_names_a_writer_owns_are_the_ones_the_spec_states(name):
    m = re.search(rf"``([^`]+)``\s+\(``{name}``", " ".join(section("Compatibility").split()))
    assert m, f"Compatibility does not state {name}"
    assert m.group(1).endswith(getattr(manifest, name)), (m.group(1), getattr(manifest, name))
    assert _defining_modules(name) == {"npyseq.format.manifest"}


def test_the_writer_deletes_only_named_and_temporary_files(tmp_path):
    out = tmp_path / "ds"
    (out / "x").mkdir(parents=True)
    (out / "x" / "000007.npy").write_bytes(b"a third party's shard")  # not in the manifest: stays
    (out / "x" / "000000.npy.partial").write_bytes(b"left by a killed run")  # a temporary file: deleted
    (out / "x" / "000001.offsets.npy.partial.tmp").write_bytes(b"left by a killed run")
    (out / "notes.txt").write_text("mine")
    npyseq.write_shards(out, {"x": np.arange(5)}, rows=2, progress=False)
    assert sorted(os.listdir(out / "x")) == ["000000.npy", "000001.npy", "000002.npy", "000007.npy"]
    assert (out / "notes.txt").read_text() == "mine"
    before = {p: open(p, "rb").read() for p in glob.glob(str(out / "**" / "*"), recursive=True) if os.path.isfile(p)}
    with pytest.raises(ForeignFilesError, match=re.escape(
            f"{out}: overwrite=True replaces only a dataset npyseq wrote, but this folder also holds "
            "what npyseq did not write (or its manifest does not name): notes.txt, x/000007.npy.")):
        npyseq.write_shards(out, {"x": np.arange(7)}, rows=2, overwrite=True, progress=False)
    after = {p: open(p, "rb").read() for p in glob.glob(str(out / "**" / "*"), recursive=True) if os.path.isfile(p)}
    assert after == before and load_manifest_json(out)["rows"] == 5


# --- the package's imports ------------------------------------------------------------

ALLOWED_IMPORTS = {"numpy", "xxhash", "ml_dtypes", "npyseq.errors", "npyseq.forks", "npyseq.format"}


def _imports(path: str) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import in ``path``, functions' included."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("npyseq.format." if node.level else "") + (node.module or "")
            if base in ("npyseq", "npyseq.format"):  # from npyseq import forks: the module npyseq.forks
                found += [(f"{base}.{a.name}", [], node.lineno) for a in node.names]
            else:
                found.append((base, [a.name for a in node.names], node.lineno))
    return found


def _format_files() -> list[str]:
    return sorted(glob.glob(os.path.join(FORMAT_DIR, "*.py")))


@pytest.mark.parametrize("path", _format_files(), ids=os.path.basename)
def test_the_format_package_imports_only_the_standard_library_numpy_and_its_leaves(path):
    import sys

    for module, names, line in _imports(path):
        top = module.split(".")[0]
        if top == "npyseq":
            assert any(module == a or module.startswith(a + ".") for a in ALLOWED_IMPORTS), (
                f"{os.path.basename(path)}:{line} imports {module}: the format imports nothing of "
                "storage, order or keras (or any npyseq module but errors and forks)")
        else:
            assert top in sys.stdlib_module_names or top in ALLOWED_IMPORTS, (
                f"{os.path.basename(path)}:{line} imports {module}")
        if module.startswith("npyseq"):
            private = [n for n in names if n.startswith("_") and n != "__future__"]
            assert not private, f"{os.path.basename(path)}:{line} imports private names {private} of {module}"
    with open(path, encoding="utf-8") as f:
        assert len(f.readlines()) <= 500, f"{os.path.basename(path)} has more than 500 lines"


def test_the_format_modules_import_each_other_without_a_circle():
    graph = {}
    for path in _format_files():
        me = "npyseq.format." + os.path.basename(path)[:-3]
        graph[me] = {module for module, _, _ in _imports(path) if module.startswith("npyseq.format.")}
    done: set[str] = set()

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, f"import circle: {' -> '.join(stack + (node,))}"
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, stack + (node,))
        done.add(node)

    for node in graph:
        visit(node, ())
