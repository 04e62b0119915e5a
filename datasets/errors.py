"""Errors of data on disk, kept apart from the registry in ``datasets/__init__.py`` so that the data set
modules can raise them without importing the registry that imports them."""
from __future__ import annotations


class DatasetError(Exception):
    """Data on disk that cannot be used: a missing folder or file, a malformed annotation file, an
    unreadable image. The message names the file; ``main.py`` reports it in one line, no traceback.
    The subclasses below are also the built-in error of their kind, so ``except OSError`` still works."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A folder or file of the data set is missing."""


class DatasetFormatError(DatasetError, ValueError):
    """A file of the data set has the wrong content (annotation keys, image and PNG sizes)."""


class DatasetReadError(DatasetError, OSError):
    """A file of the data set exists but cannot be decoded."""


def data_error_message(error: DatasetError) -> str:
    """The error's message on one line, also when a DataLoader worker re-raised it: the worker's copy
    carries the worker's traceback, whose last line is ``<module>.<class>: <message>``."""
    text = str(error).strip()
    if "Traceback (most recent call last)" not in text:
        return " ".join(line.strip() for line in text.splitlines())
    last = text.splitlines()[-1]
    head, sep, message = last.partition(": ")
    return message if sep and head.rsplit(".", 1)[-1] == type(error).__name__ else last


def listing(items, limit: int = 10) -> str:
    """The first ``limit`` of ``items``, comma-separated, and how many more there are: entries a message
    names without growing past a line."""
    items = [str(item) for item in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
