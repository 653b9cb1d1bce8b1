"""Build script: pure Python by default; ``WALLET_COMPILE=1`` also compiles the ledger core.

The default build (``pip install -e .``, ``make install``) is the project as written, every
module Python, exactly as without this file. With ``WALLET_COMPILE=1`` in the environment, a
non-editable install (``make install-compiled``: ``.venv-compiled``) compiles the modules in
``COMPILED`` with mypyc (part of mypy) into C extensions that sit next to their ``.py`` files in
the installed package, where the import system takes an extension before source. Nothing is ever
built into the source tree: an editable install with ``WALLET_COMPILE=1`` is refused, because
``build_ext --inplace`` would leave ``.so`` files in ``ledger/`` that the pure build would then
import. ``docs/adr/0012-compiled-core.md`` has the why and the measurements.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# The pure core: stdlib only, no trio, no I/O, fully typed. ``tests/conftest.py`` reads this
# list (``make test-compiled`` checks that each of these imports as an extension module).
COMPILED = [
    "ledger/_model.py",
    "ledger/_state.py",
    "ledger/_decide.py",
    "ledger/_apply.py",
    "ledger/_codec.py",
    "ledger/_part.py",
]

# The setuptools commands that build extensions; metadata steps (egg_info, dist_info) do not
# need mypyc's ~40 s type check and C generation.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install"}
EDITABLE_COMMANDS = {"develop", "editable_wheel"}

ext_modules = []
if os.environ.get("WALLET_COMPILE") == "1":
    commands = set(sys.argv[1:])
    if commands & EDITABLE_COMMANDS:
        sys.exit("WALLET_COMPILE=1 needs a non-editable install (pip install --no-build-isolation .):"
                 " an editable one would build .so files into the source tree")
    if commands & BUILD_COMMANDS:
        from mypyc.build import mypycify

        ext_modules = mypycify(COMPILED)

setup(ext_modules=ext_modules)
