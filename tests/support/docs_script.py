"""Run the Python blocks of one Markdown file, top to bottom; for tests/test_docs.py.

    python tests/support/docs_script.py BLOCKS.json

``BLOCKS.json`` is a list of ``[file, first_line, code]``. The blocks run in
this module's namespace, in the current folder, one after another, as a user
who copies them into one session would run them: a name one block defines is
there for the next. Each block is compiled under its file's name with its
line numbers, so a traceback points at the line of the Markdown file.
Functions the blocks define live in ``__main__`` and so pickle by reference
(a ``transform`` for process workers).
"""

import json
import sys


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        blocks = json.load(f)
    namespace = globals()
    for path, line, code in blocks:
        print(f"--- {path}:{line}", flush=True)
        exec(compile("\n" * (line - 1) + code, path, "exec"), namespace)
    print("--- all blocks ran", flush=True)


if __name__ == "__main__":
    main()
