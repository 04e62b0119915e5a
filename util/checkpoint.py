"""Checkpoints: atomic writes, safe (weights-only) reads, and state-dict loading that reports its gaps.

A checkpoint is the dict of the public code, ``{model, optimizer, lr_scheduler, epoch, args}``
with ``args`` an ``argparse.Namespace``. Reading it never runs code: the unpickler only accepts
tensors, plain containers and ``argparse.Namespace``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import urllib.parse
from dataclasses import dataclass, field

import torch
from torch import nn

# The only non-builtin type a checkpoint of the original format carries (its ``args``).
SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model."""


def save_checkpoint(obj, path: str) -> None:
    """Write ``obj`` with torch.save so that ``path`` is always either the old or the new file.

    The bytes go to a temporary file in the same directory, are flushed to disk, and only then
    replace ``path`` (os.replace is atomic on POSIX and Windows). A crash or kill during the write
    leaves the previous checkpoint intact.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_url(path_or_url: str) -> bool:
    return urllib.parse.urlparse(path_or_url).scheme in ("http", "https", "ftp", "s3", "file")


def _download(url: str) -> str:
    """Fetch ``url`` once into torch hub's checkpoint folder and return the local path."""
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(cache_dir, exist_ok=True)
    filename = os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint.pth"
    local = os.path.join(cache_dir, filename)
    if not os.path.exists(local):
        print(f"Downloading checkpoint {url} to {local}", flush=True)
        try:
            torch.hub.download_url_to_file(url, local, progress=True)
        except Exception as e:  # network errors come in many types; all mean the same to the user
            raise CheckpointError(f"could not download checkpoint {url}: {e}") from e
    return local


def load_checkpoint(path_or_url: str, map_location="cpu"):
    """Read a checkpoint file or URL without executing any code stored in it.

    Raises CheckpointError naming the file when it is missing, truncated, or holds Python objects
    other than tensors, containers and argparse.Namespace (a pickle that would run code).
    """
    path = _download(path_or_url) if _is_url(path_or_url) else path_or_url
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path!r} (expected a file written by torch.save)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load checkpoint {path!r}: it contains Python objects that could run code when "
            f"unpickled, and only tensors, numbers, strings, containers and argparse.Namespace are "
            f"accepted ({detail}). Nothing from the file was executed."
        ) from e
    except (EOFError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {path!r} is truncated or not a torch checkpoint: {type(e).__name__}: {e}"
        ) from e


@dataclass
class LoadReport:
    """What ``load_model_state`` did not load: keys the model has and the checkpoint lacks, etc."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        def listing(keys: list[str]) -> str:
            more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        lines = []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}, left at their initial values): "
                         f"{listing(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}, ignored): {listing(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"shape mismatches ({len(self.mismatched)}): {listing(shown)}")
        return "\n".join(lines)


# Keys some profilers (thop) add to modules; they are not weights.
_IGNORED_SUFFIXES = ("total_ops", "total_params")


def load_model_state(model: nn.Module, state_dict: dict, name: str = "checkpoint",
                     allow_shape_mismatch: bool = False) -> LoadReport:
    """Load ``state_dict`` into ``model`` and report, not hide, every key that does not fit.

    Shape mismatches mean the checkpoint was trained with a different configuration (classes,
    hidden_dim, levels, ...): they raise CheckpointError listing the keys unless
    ``allow_shape_mismatch``, in which case those tensors are skipped and reported.
    """
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f"{name}: expected a state dict (a dict of tensors), got {type(state_dict).__name__}")
    own = model.state_dict()
    report = LoadReport()
    loadable = {}
    for k, v in state_dict.items():
        if k.endswith(_IGNORED_SUFFIXES):
            continue
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape:
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
            continue
        loadable[k] = v
    if report.mismatched and not allow_shape_mismatch:
        raise CheckpointError(
            f"{name} was trained with a different model configuration; these tensors differ in shape:\n"
            + report.describe()
            + "\nCheck the model flags (--num_feature_levels, --hidden_dim, --with_box_refine, "
              "--two_stage, --bf/--share_bf, number of classes ...)."
        )
    result = model.load_state_dict(loadable, strict=False)
    report.missing = list(result.missing_keys)
    report.unexpected = list(result.unexpected_keys)
    if not report.clean:
        print(f"Loading {name}:\n{report.describe()}", flush=True)
    return report
