"""The README and docs/ stay true: their code runs as written, their links resolve.

Every ```python block of README.md, CONTRIBUTING.md and docs/*.md runs, file by
file, top to bottom in one fresh folder, in a subprocess (``docs_script.py``),
as a user who copies them would run them; then the ``npyseq ...`` lines of the
file's shell blocks run in the same folder. A block marked ```python no-run
(or ```bash no-run) is skipped, and only a few may be. Keras snippets run on
the TensorFlow backend with tiny data, so the whole file takes seconds.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "support", "docs_script.py")
DOCS_DIR = os.path.join(ROOT, "docs")
PAGES = ["README.md", "CONTRIBUTING.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(DOCS_DIR) if f.endswith(".md"))
EXPECTED_DOCS = {"format.md", "guide.md", "ragged.md", "guarantees.md", "benchmarks.md", "design.md",
                 "demo.md"}
MAX_SKIPPED = 3  # python blocks marked no-run, over every page
SHELLS = ("bash", "sh", "shell", "console")


@dataclass
class Block:
    page: str
    line: int  # of the first line of code, 1-based
    lang: str
    flags: tuple[str, ...]
    code: str


def blocks_of(page: str) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        lines = f.read().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        start, i = i + 1, i + 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        assert i < len(lines), f"{page}:{start}: a code block is never closed"
        out.append(Block(page, start + 1, m.group(1), tuple(m.group(2).split()),
                         "\n".join(lines[start:i]) + "\n"))
        i += 1
    return out


def runs(block: Block) -> bool:
    return "no-run" not in block.flags


def npyseq_lines(block: Block) -> list[str]:
    return [line.strip() for line in block.code.splitlines() if line.strip().startswith("npyseq ")]


def make_cli_inputs(folder: str) -> None:
    """The input files the CLI examples name and no Python block makes."""
    if not os.path.exists(os.path.join(folder, "arrays.npz")):
        np.savez(os.path.join(folder, "arrays.npz"), x=np.zeros((10, 4), np.float32), y=np.arange(10))
    if not os.path.exists(os.path.join(folder, "data.h5")):  # the HDF5 and Zarr lines of the README
        import h5py
        import zarr

        with h5py.File(os.path.join(folder, "data.h5"), "w") as f:
            f["x"], f["y"] = np.zeros((10, 4), np.float32), np.arange(10)
            f.create_group("group")["images"] = np.zeros((6, 4, 4), np.uint8)
        zarr.open_group(os.path.join(folder, "store.zarr"), mode="w").create_array("a", data=np.arange(5))
    if not os.path.exists(os.path.join(folder, "images.bin")):
        with open(os.path.join(folder, "images.bin"), "wb") as f:
            f.write(b"HEADER-16-BYTES!" + np.arange(5 * 32 * 32 * 3, dtype=np.uint8).tobytes())


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["KERAS_BACKEND"] = "tensorflow"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# --- the code of every page runs ------------------------------------------------------------------


def test_every_page_is_tested_and_the_docs_are_all_there():
    assert {os.path.basename(p) for p in PAGES if p.startswith("docs")} == EXPECTED_DOCS
    python = [b for p in PAGES for b in blocks_of(p) if b.lang == "python"]
    assert len(python) >= 20  # the extraction finds the blocks
    skipped = [f"{b.page}:{b.line}" for b in python if not runs(b)]
    assert len(skipped) <= MAX_SKIPPED, skipped


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("page", PAGES)
def test_the_code_of_a_page_runs_as_written(page, tmp_path):
    blocks = blocks_of(page)
    python = [[b.page, b.line, b.code] for b in blocks if b.lang == "python" and runs(b)]
    commands = [line for b in blocks if b.lang in SHELLS and runs(b) for line in npyseq_lines(b)]
    if not python and not commands:
        pytest.skip(f"{page} has no code to run")
    folder = tmp_path / "user"
    folder.mkdir()
    env = environment()
    if python:
        (tmp_path / "blocks.json").write_text(json.dumps(python), encoding="utf-8")
        proc = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "blocks.json")], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"{page}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        assert proc.stdout.rstrip().endswith("--- all blocks ran")
    make_cli_inputs(str(folder))
    for command in commands:
        line = shlex.quote(sys.executable) + " -m " + command
        proc = subprocess.run(["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"{page}: {command}\n{proc.stdout}\n{proc.stderr}"


def test_the_cli_lines_are_found():
    commands = [c for b in blocks_of("README.md") if b.lang in SHELLS for c in npyseq_lines(b)]
    assert [c.split()[1] for c in commands] == ["convert"] * 6 + ["info", "verify"]


# --- the documented defaults are the code's ------------------------------------------------------


def documented_call(page: str, marker: str) -> ast.Call:
    """The call in the python block of ``page`` that starts with the comment ``marker``."""
    found = [b for b in blocks_of(page) if b.lang == "python" and b.code.startswith(marker)]
    assert len(found) == 1, f"{page}: {len(found)} blocks start with {marker!r}"
    calls = [n for n in ast.walk(ast.parse(found[0].code)) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr.endswith("Sequence")]
    assert len(calls) == 1
    return calls[0]


def defaults_of(cls) -> dict:
    signature = inspect.signature(cls)
    return {name: p.default for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty and not name.startswith("_")}


def listed_defaults(page: str, cls: str) -> dict:
    call = documented_call(page, f"# {cls}'s arguments, each at its default")
    assert call.func.attr == cls
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg != "x"}


def test_the_arguments_listed_as_shardsequence_defaults_are_its_defaults():
    import npyseq

    assert listed_defaults("docs/guide.md", "ShardSequence") == defaults_of(npyseq.ShardSequence)


def test_the_arguments_listed_as_raggedsequence_defaults_are_its_defaults():
    import npyseq

    listed = listed_defaults("docs/ragged.md", "RaggedSequence")
    defaults = defaults_of(npyseq.RaggedSequence)
    inherited = defaults_of(npyseq.ShardSequence)

    assert {name: defaults[name] for name in listed} == listed
    assert set(defaults) - set(listed) == set(inherited)  # the rest: ShardSequence's, in guide.md
    assert {name: defaults[name] for name in inherited} == inherited


# --- links and words a reader outside the project cannot follow ----------------------------------


LINK_RE = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES)
def test_links_stay_inside_the_repository_and_resolve(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    for target in LINK_RE.findall(text):
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target.split("#")[0]))
        assert path.startswith(ROOT + os.sep), f"{page}: {target} leaves the repository"
        assert os.path.exists(path), f"{page}: {target} does not exist"


@pytest.mark.parametrize("page", PAGES)
def test_no_machine_paths_tracker_numbers_or_private_context(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    for pattern in (r"/work/", r"/home/", r"/tmp/", r"\.\./shared", r"DESIGN\.md",
                    r"(?<![\w/.-])#\d+", r"\b[Ii]ssue \d+", r"development machine",
                    r"other engineers"):
        found = [m.group(0) for m in re.finditer(pattern, text)]
        assert not found, f"{page}: {pattern!r} found: {found[:3]}"


def test_readme_is_a_front_door():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()

    # A front door, not a manual (it was 875 lines): what each feature is, one example, a link. 350 since
    # resuming, process workers and several hosts each have the section and example their users look for.
    assert len(readme.splitlines()) <= 350
    assert "make test    # runs the test suite" in readme and "make test" in ci  # CI runs what it says
    assert "make demo    #" in readme
    assert 'pip install "npyseq[tensorflow]"` fails today' in readme  # no release on PyPI yet


def headings_of(page: str) -> set[str]:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return {line.lstrip("#").strip() for line in f.read().splitlines() if re.match(r"^#{1,6} ", line)}


def test_the_sections_benchmarks_readme_cites_exist():
    """Each benchmark's "cited by" cell names doc sections: `docs/page.md`: "Title", "Title"."""
    with open(os.path.join(ROOT, "benchmarks", "README.md"), encoding="utf-8") as f:
        rows = [line for line in f.read().splitlines() if line.startswith("| `python -m benchmarks.")]
    cited = []
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        parts = re.split(r"`(docs/[\w.-]+\.md)`:", cell)
        assert len(parts) >= 3, f"benchmarks/README.md cites no doc section: {row[:80]}"
        for page, titles in zip(parts[1::2], parts[2::2]):
            cited += [(page, title) for title in re.findall(r'"([^"]+)"', titles)]
    assert len(rows) >= 7 and len(cited) >= 10
    missing = [(page, title) for page, title in cited if title not in headings_of(page)]
    assert not missing, f"benchmarks/README.md cites sections these pages lack: {missing}"
