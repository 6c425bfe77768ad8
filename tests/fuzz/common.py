"""What every atheris harness here shares: its seeds, its command line, its one allowed error.

A harness is a module with ``one_input(data: bytes)`` (it feeds the bytes to one parser and lets
only that parser's documented error pass) and ``SEEDS`` (valid inputs libFuzzer mutates). Run one
with ``python -m tests.fuzz.fuzz_manifest [libFuzzer flags] [CORPUS_DIR]``, e.g.
``-max_total_time=60``; any other exception is a crash: atheris prints its traceback, writes the
input to ``crash-<sha1>`` (``-artifact_prefix=DIR/``) and exits non-zero.
``tests/fuzz/test_fuzz.py`` runs each one for a few seconds, ``benchmarks/fuzz.py`` for longer.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["DICTIONARY", "main"]

DICTIONARY = Path(__file__).with_name("json.dict")


def main(one_input: Callable[[bytes], None], seeds: Sequence[bytes], argv: Sequence[str] | None = None) -> None:
    """Fuzz ``one_input`` (never returns: libFuzzer exits the process).

    The seeds are written into the first corpus directory on the command line (a temporary one
    when none is given) before libFuzzer reads it; without ``-dict=``, libFuzzer gets
    ``json.dict`` (JSON tokens, escapes, numbers and nesting that parsers get wrong).
    """
    import atheris

    args = list(sys.argv if argv is None else argv)
    dirs = [a for a in args[1:] if not a.startswith("-")]
    if not dirs:
        dirs = [tempfile.mkdtemp(prefix="fuzz-corpus-")]
        args.append(dirs[0])
    if not any(a.startswith("-dict=") for a in args):
        args.insert(1, f"-dict={DICTIONARY}")
    corpus = Path(dirs[0])
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i:03d}").write_bytes(seed)
    atheris.Setup(args, one_input)
    atheris.Fuzz()
