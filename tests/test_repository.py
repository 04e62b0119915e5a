"""The repository stands alone: what its files cite is in it."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Generated or downloaded, never cited from.
SKIPPED_DIRS = {".git", "build", "exps", "data", "__pycache__", ".pytest_cache", ".ruff_cache", ".cache"}
TEXT_SUFFIXES = (".py", ".md", ".sh", ".h", ".cpp", ".cu", ".cuh", ".toml", ".txt", "Makefile", "run")


def _text_files() -> list[str]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        found += [os.path.join(folder, f) for f in files if f.endswith(TEXT_SUFFIXES)]
    return found


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def test_no_file_cites_the_external_specification():
    # The design facts live in docs/; a citation of "SPEC section N" points outside the repository.
    pattern = re.compile(r"\bSPEC\b")
    here = os.path.abspath(__file__)
    citing = [os.path.relpath(p, ROOT) for p in _text_files() if p != here and pattern.search(_read(p))]
    assert citing == [], f"cite docs/ instead: {citing}"


def test_every_cited_doc_exists():
    cited = {}
    for path in _text_files():
        for doc in re.findall(r"\bdocs/[\w/.-]+\.md\b", _read(path)):
            cited.setdefault(doc, []).append(os.path.relpath(path, ROOT))
    missing = {doc: where for doc, where in cited.items() if not os.path.isfile(os.path.join(ROOT, doc))}
    assert cited and not missing, missing
