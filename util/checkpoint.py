"""Checkpoints: atomic writes, safe (weights-only) reads, and state-dict loading that reports its gaps.

A checkpoint is the dict of the public code, ``{model, optimizer, lr_scheduler, epoch, args}``
with ``args`` an ``argparse.Namespace``. Reading it never runs code: the unpickler only accepts
tensors, plain containers, ``argparse.Namespace`` and numpy scalars and dtypes (which checkpoints of
derived projects carry in their ``args``). A checkpoint trained with another architecture than the
run's flags is refused with the flags to pass, before it can leave weights at random.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import math
import os
import pickle
import re
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from util.args import DEFAULT_META_ARCH, flag_defaults, is_url, switch_detector
from util.atomic import write_atomically
from util.errors import CheckpointError
from util.hf.folder import is_hf_folder


def _numpy_scalar_constructor():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 1.26 has no numpy._core
        from numpy.core.multiarray import scalar
    return scalar


def _named_numpy_scalar(module: str):
    """numpy's scalar constructor under the name a pickle written by numpy ``module``'s era uses.

    numpy 1.x pickles scalars as ``numpy.core.multiarray.scalar``, numpy 2 as
    ``numpy._core.multiarray.scalar``; the weights-only unpickler matches globals by that name.
    """
    construct = _numpy_scalar_constructor()

    def scalar(*args):
        return construct(*args)

    scalar.__module__ = module
    scalar.__name__ = scalar.__qualname__ = "scalar"
    return scalar


def _numpy_dtype_classes() -> list[type]:
    """The dtype classes of booleans, integers and floats (a pickled dtype sets its state on one)."""
    codes = "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]
    return sorted({type(np.dtype(c)) for c in codes}, key=lambda t: t.__name__)


def _encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    import codecs

    return codecs.encode(obj, encoding, errors)


# How a pickled numpy scalar spells its raw bytes; recent torch allows it by default, older may not.
_encode.__module__, _encode.__name__, _encode.__qualname__ = "_codecs", "encode", "encode"

# Everything a checkpoint may hold beyond what torch's weights-only unpickler allows by default.
SAFE_GLOBALS = [
    argparse.Namespace,
    np.dtype,
    *_numpy_dtype_classes(),
    _named_numpy_scalar("numpy.core.multiarray"),
    _named_numpy_scalar("numpy._core.multiarray"),
    _encode,
]


@contextlib.contextmanager
def _safe_globals_allowed() -> Iterator[None]:
    """Allow SAFE_GLOBALS for one load; torch 2.4 lacks the context manager, so allow them for good."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    if scoped is not None:
        with scoped(SAFE_GLOBALS):
            yield
        return
    # Process-wide on torch 2.4: these are the same harmless types, whichever load comes next.
    known = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([g for g in SAFE_GLOBALS if g not in known])
    yield


def save_checkpoint(obj, path: str) -> None:
    """Write ``obj`` with torch.save so that ``path`` is always either the old or the new file
    (``util.atomic.write_atomically``): a crash or kill during the write leaves the previous checkpoint."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def _check_checkpoint_file(path: str, shown: str) -> None:
    """Raise CheckpointError naming ``shown`` when the file at ``path`` cannot be a torch checkpoint.

    Catches what users actually end up with: an empty file (an interrupted copy), an HTML page (what a
    file-sharing link returns instead of the file), a cut-off download, or another format.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {shown} is empty (0 bytes): the download or copy that wrote it "
                              "did not finish; fetch it again")
    with open(path, "rb") as f:
        head = f.read(4096)
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text[:1024]:
        raise CheckpointError(
            f"checkpoint {shown} is an HTML page ({size} bytes), not a checkpoint: a file-sharing link "
            "(e.g. a Google Drive share or virus-scan page) returned its web page instead of the file; "
            "download the file itself (in a browser, or with a direct-download link) and pass that")
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format: its directory is at the very end
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"checkpoint {shown} is truncated ({size} bytes, the end of its zip "
                                  "archive is missing): download or copy it again")
        _verify_checksums(path, shown)
        return
    if not head.startswith(b"\x80"):  # the legacy format is a sequence of pickles
        raise CheckpointError(f"checkpoint {shown} is not a torch checkpoint: it starts with {head[:8]!r}, "
                              "neither torch.save's zip archive nor its legacy pickle format")


def _verify_checksums(path: str, shown: str) -> None:
    """Check every member of a torch.save zip archive against the CRC-32 stored beside it.

    torch.load does not: bytes damaged inside a tensor's storage (a failing disk, a bad copy) load as
    garbage weights. Reading the file once more costs ~0.1 s per 300 MB (docs/benchmarks.md), most of
    it served from the page cache that torch.load then reuses.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise CheckpointError(f"checkpoint {shown} is corrupt: its zip archive is damaged ({e}); "
                              "download or copy it again") from e
    if damaged is not None:
        raise CheckpointError(f"checkpoint {shown} is corrupt: the bytes of {damaged} do not match their "
                              "stored checksum (damaged on disk or in a copy); download or copy it again")


def _cache_path(url: str) -> str:
    """Where ``url`` is cached: share links often end alike (``uc``, ``view``), so the name has its hash."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint.pth"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return os.path.join(torch.hub.get_dir(), "checkpoints", f"{digest}-{name}")


def _download(url: str) -> str:
    """Fetch ``url`` once into torch hub's checkpoint folder and return the local path.

    Only a file that looks like a checkpoint enters the cache, so an HTML page or a cut-off transfer
    is fetched again next time rather than served from the cache.
    """
    local = _cache_path(url)
    if os.path.exists(local):
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    partial = f"{local}.{os.getpid()}.part"
    print(f"Downloading checkpoint {url} to {local}", flush=True)
    try:
        torch.hub.download_url_to_file(url, partial, progress=True)
        _check_checkpoint_file(partial, shown=f"downloaded from {url}")
        os.replace(partial, local)
    except CheckpointError:
        raise
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise CheckpointError(f"could not download checkpoint {url}: {e}") from e
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return local


def _refused_global(error: Exception) -> str:
    """The part of torch's weights-only refusal that names what the file holds."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL \S+", text) or re.search(r"WeightsUnpickler error: .+",
                                                                            text)
    if found:
        return found.group(0)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def load_checkpoint(path_or_url: str, map_location="cpu"):
    """Read a checkpoint file or URL without executing any code stored in it.

    Raises CheckpointError naming the file when it is missing, empty, an HTML page, truncated, of
    another format, or holds Python objects other than those SAFE_GLOBALS allows (a pickle that
    would run code).
    """
    path = _download(path_or_url) if is_url(path_or_url) else path_or_url
    shown = f"{path!r}" if path == path_or_url else f"{path!r} (downloaded from {path_or_url})"
    if os.path.isdir(path):
        if is_hf_folder(path):  # converting it builds models, which this module is below
            raise CheckpointError(f"checkpoint {shown} is a Hugging Face model folder: read it with "
                                  "util.hf.convert.load_checkpoint_or_folder (main.py --resume and test.py "
                                  "do), or convert it with tools/convert_hf.py to-ours")
        raise CheckpointError(f"checkpoint {shown} is a directory; pass the checkpoint file in it (e.g. "
                              f"{os.path.join(path, 'checkpoint.pth')})")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path!r} (expected a file written by torch.save)")
    try:
        _check_checkpoint_file(path, shown)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {shown}: {e.strerror or e}") from e
    try:
        with _safe_globals_allowed():
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {shown}: {e.strerror or e}") from e
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(f"checkpoint {shown} is truncated or corrupt: {e}") from e
        raise CheckpointError(
            f"refusing to load checkpoint {shown}: it contains Python objects that could run code when "
            f"unpickled, and only tensors, numbers, strings, containers, argparse.Namespace and numpy "
            f"scalars are accepted ({_refused_global(e)}). Nothing from the file was executed."
        ) from e
    except (EOFError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {shown} is truncated or not a torch checkpoint: {type(e).__name__}: {e}"
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

    def describe(self, limit: int = 10, sep: str = "\n") -> str:
        lines = []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}, left at their initial values): "
                         f"{_listing(self.missing, limit)}")
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}, ignored): "
                         f"{_listing(self.unexpected, limit)}")
        if self.mismatched:
            shown = [f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"shape mismatches ({len(self.mismatched)}): {_listing(shown, limit)}")
        return sep.join(lines)


def _listing(keys: list[str], limit: int) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# Keys some profilers (thop) add to modules; they are not weights.
_IGNORED_SUFFIXES = ("total_ops", "total_params")


def _storage_identity(t: torch.Tensor) -> tuple | None:
    """Equal for two state-dict entries that are one tensor under two names (None for empty ones)."""
    if t.numel() == 0:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def load_model_state(model: nn.Module, state_dict: dict, name: str = "checkpoint",
                     allow_shape_mismatch: bool = False) -> LoadReport:
    """Load ``state_dict`` into ``model`` and report, not hide, every key that does not fit.

    Shape mismatches mean the checkpoint was trained with a different configuration (classes,
    hidden_dim, levels, ...): they raise CheckpointError listing the keys unless
    ``allow_shape_mismatch``, in which case those tensors are skipped and reported. A key is not
    missing when another name of the same tensor was loaded (the refine decoder's
    ``transformer.decoder.bbox_embed.i`` is ``bbox_embed.i``).
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
            f"{name} was trained with a different model configuration; these tensors differ in shape: "
            + report.describe(sep="; ")
            + ". Check the model flags (--num_feature_levels, --hidden_dim, --with_box_refine, "
              "--two_stage, --bf/--share_bf, --dataset_file for the number of classes ...)."
        )
    result = model.load_state_dict(loadable, strict=False)
    loaded = {_storage_identity(own[k]) for k in loadable if k in own} - {None}
    report.missing = [k for k in result.missing_keys if _storage_identity(own[k]) not in loaded]
    report.unexpected = list(result.unexpected_keys)
    if not report.clean:
        print(f"Loading {name}:\n{report.describe()}", flush=True)
    return report


# Flags that decide which tensors a model has or how its forward uses them. A checkpoint trained with
# other values does not give its published results, even where its tensors happen to load.
STRUCTURAL_FLAGS = (
    "meta_arch", "backbone", "dilation", "position_embedding", "position_embedding_scale",
    "num_feature_levels", "hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward",
    "enc_n_points", "dec_n_points", "num_queries", "with_box_refine", "two_stage", "masks", "pre_norm", "bf",
    "share_bf", "insert_idx", "start_idx", "bt_num_layers",
)
# Only meaningful with a BatchFormer (--bf other than 0).
_BATCHFORMER_LAYOUT = ("share_bf", "insert_idx", "start_idx", "bt_num_layers")


@functools.cache
def _flag_defaults(meta_arch: str = DEFAULT_META_ARCH) -> dict:
    return flag_defaults(meta_arch)


def _get(saved_args, flag: str, default=None):
    if isinstance(saved_args, dict):
        return saved_args.get(flag, default)
    return getattr(saved_args, flag, default)


def recorded_meta_arch(saved_args, state_dict=None, name: str = "the checkpoint") -> tuple[str, str | None]:
    """The detector a checkpoint holds, and a notice when its keys rather than its args said so.

    Its recorded ``--meta_arch``; else (no args, or args older than the flag: the public repositories'
    own) the detector whose published keys ``state_dict`` has (``models.detectors.recognise``); else
    Deformable DETR, which every checkpoint of this code base was before the flag existed. A recorded
    detector this version does not have is a CheckpointError naming ``name``.
    """
    from models.detectors import DETECTORS, recognise

    recorded = _get(saved_args, "meta_arch") if isinstance(saved_args, (argparse.Namespace, dict)) else None
    if recorded is not None:
        if _plain(recorded) not in DETECTORS:
            raise CheckpointError(f"{name} records --meta_arch {recorded}, which is no detector of this "
                                  f"version ({', '.join(DETECTORS)})")
        return _plain(recorded), None

    found = recognise(state_dict) if isinstance(state_dict, dict) else None
    if found is None:
        return DEFAULT_META_ARCH, None
    return found, f"records no --meta_arch; its keys are those of --meta_arch {found}"


def recorded_value(saved_args, flag: str, meta_arch: str | None = None):
    """``flag`` as the checkpoint's args record it, plain Python; where they predate the flag, its default
    for the checkpoint's detector (``meta_arch``; read from the args when None).

    Published Deformable DETR checkpoints record no BatchFormer flags: they were trained without one,
    which is what the defaults say.
    """
    if meta_arch is None:
        meta_arch = _plain(_get(saved_args, "meta_arch", DEFAULT_META_ARCH))
    if flag == "meta_arch":
        return meta_arch
    return _plain(_get(saved_args, flag, _flag_defaults(meta_arch).get(flag)))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _normalised(flag: str, value):
    if flag == "insert_idx":  # as the model reads them: sorted, once each
        return sorted({int(i) for i in value}) if value else None
    return value


def _batchformer_positions(values: dict) -> list[int] | None:
    """The encoder layers the BatchFormer of these flags runs after (each detector reads --bf,
    --insert_idx and --start_idx its own way), None without one; the flags themselves if they do not
    resolve."""
    from models.detectors import batchformer_of

    try:
        config, _ = batchformer_of(argparse.Namespace(**values))
    except (ValueError, KeyError, AttributeError, TypeError):
        return _normalised("insert_idx", values.get("insert_idx"))
    return None if config is None else list(config.positions)


def _same(a, b) -> bool:
    numbers = (int, float)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, numbers) and isinstance(b, numbers) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def architecture_differences(saved_args, args, skip=(),
                             meta_arch: str | None = None) -> list[tuple[str, object, object]]:
    """(flag, checkpoint value, this run's value) for each structural flag on which they differ;
    ``meta_arch``: the checkpoint's detector (``recorded_meta_arch``; from the args when None).

    The BatchFormer's layout is compared where it runs (``insert_idx``: the resolved encoder layers).
    Without recorded args only the detector is compared (then the keys are checked).
    """
    run_meta = _plain(getattr(args, "meta_arch", DEFAULT_META_ARCH))
    if not isinstance(saved_args, (argparse.Namespace, dict)):
        if meta_arch is None or "meta_arch" in skip or meta_arch == run_meta:
            return []
        return [("meta_arch", meta_arch, run_meta)]
    if meta_arch is None:
        meta_arch = recorded_value(saved_args, "meta_arch")
    saved_values = {flag: recorded_value(saved_args, flag, meta_arch) for flag in _flag_defaults(meta_arch)}
    run_values = {**_flag_defaults(run_meta), **{k: _plain(v) for k, v in vars(args).items()}}
    saved_bf, run_bf = saved_values["bf"], run_values["bf"]
    differences = []
    for flag in STRUCTURAL_FLAGS:
        # start_idx counts through where the BatchFormer runs (insert_idx)
        if flag in skip or flag == "start_idx" or (flag in _BATCHFORMER_LAYOUT and not (saved_bf or run_bf)):
            continue
        if flag == "insert_idx":
            saved, run = _batchformer_positions(saved_values), _batchformer_positions(run_values)
        else:
            saved, run = saved_values[flag], run_values[flag]
        if not _same(saved, run):
            differences.append((flag, saved, run))
    return differences


# Flags whose command-line switch turns them off: dest -> switch.
_NEGATED_SWITCHES = {"aux_loss": "no_aux_loss"}


def as_command_line(flag: str, value) -> list[str]:
    """The tokens that give ``flag`` ``value`` on main.py's command line ([] for an unset flag)."""
    if isinstance(value, bool):
        if flag in _NEGATED_SWITCHES:
            return [] if value else [f"--{_NEGATED_SWITCHES[flag]}"]
        return [f"--{flag}"] if value else []
    if value is None:
        return []
    if isinstance(value, list):
        return [f"--{flag}", *map(str, value)]
    return [f"--{flag}", str(value)]


def _listed(differences: list[tuple[str, object, object]]) -> str:
    def one(flag: str, saved, run) -> str:
        if flag in _NEGATED_SWITCHES:  # as the user types it
            return f"--{_NEGATED_SWITCHES[flag]} (checkpoint {not saved}, this run {not run})"
        return f"--{flag} (checkpoint {saved}, this run {run})"

    return ", ".join(one(*difference) for difference in differences)


def _differences_message(name: str, differences: list[tuple[str, object, object]]) -> str:
    listed = _listed(differences)
    add = [" ".join(as_command_line(flag, saved)) for flag, saved, _ in differences
           if as_command_line(flag, saved)]
    drop = [f"--{flag}" for flag, saved, _ in differences if not as_command_line(flag, saved)]
    advice = " and ".join(part for part in (f"pass {' '.join(add)}" if add else "",
                                            f"drop {' '.join(drop)}" if drop else "") if part)
    return f"{name} was trained with another architecture than these flags build: {listed}; {advice}"


# The BatchFormer's flags: at inference without --eval_bf the layer is skipped, and they change nothing.
_BATCHFORMER_FLAGS = ("bf", *_BATCHFORMER_LAYOUT)


def _batchformer_runs(args: argparse.Namespace) -> bool:
    """Whether the forward of this run uses a BatchFormer: in training with --bf, at inference (--eval)
    only with --eval_bf."""
    inference = bool(getattr(args, "eval", False))
    return bool(getattr(args, "bf", 0)) and (not inference or bool(getattr(args, "eval_bf", 0)))


def load_weights(model: nn.Module, checkpoint: dict, args: argparse.Namespace, name: str, complete: bool,
                 skip_flags: tuple[str, ...] = (), new_batchformer: bool = False,
                 batchformer_optional: bool = False) -> LoadReport:
    """Load ``checkpoint['model']`` into ``model`` after checking it was trained with this architecture.

    Stops (CheckpointError, one line naming ``name``) when the checkpoint's recorded args differ on a
    STRUCTURAL_FLAGS flag, and, if ``complete`` (evaluation, frozen weights), when a weight the model
    uses is missing. With ``--allow_partial_load`` both become warnings and shape-mismatched tensors are
    skipped. Flags in ``skip_flags`` or ``args.arch_overrides`` (given on test.py's command line on
    purpose) are not compared.

    The BatchFormer: at inference (``args.eval``) without ``--eval_bf`` it is skipped, so its flags and
    weights need not match (said in a notice): a plain Deformable DETR checkpoint evaluates with a
    BatchFormer config's flags. ``new_batchformer``: a ``--bf`` run may start from a checkpoint trained
    without one, its BatchFormer then staying at its initial values (training from it).
    ``batchformer_optional``: a BatchFormer on one side only is no difference (--finetune: the caller says
    what becomes of its tensors).
    """
    from models.param_groups import is_batchformer_parameter

    allow_partial = bool(getattr(args, "allow_partial_load", False))
    saved_args = checkpoint.get("args")
    skip = (*skip_flags, *getattr(args, "arch_overrides", ()))
    meta_arch, notice = recorded_meta_arch(saved_args, checkpoint.get("model"), name)
    if notice:
        print(f"{name} {notice}", flush=True)
    bf_differences = [d for d in architecture_differences(saved_args, args, skip=skip, meta_arch=meta_arch)
                      if d[0] in _BATCHFORMER_FLAGS]
    if bf_differences and not _batchformer_runs(args) and getattr(args, "eval", False):
        skip += _BATCHFORMER_FLAGS
        print(f"{name}: {_listed(bf_differences)}: the BatchFormer is skipped at inference (no --eval_bf), "
              "so these flags do not change the evaluation", flush=True)
    elif bf_differences and new_batchformer and not recorded_value(saved_args, "bf", meta_arch):
        skip += _BATCHFORMER_FLAGS
    elif (bf_differences and batchformer_optional
          and bool(recorded_value(saved_args, "bf", meta_arch)) != bool(args.bf)):
        skip += _BATCHFORMER_FLAGS
    differences = architecture_differences(saved_args, args, skip=skip, meta_arch=meta_arch)
    if differences:
        message = _differences_message(name, differences)
        if not allow_partial:
            raise CheckpointError(f"{message} (test.py reads them from the checkpoint), or "
                                  "--allow_partial_load to load what fits")
        print(f"warning: {message}; loading what fits (--allow_partial_load)", flush=True)
    report = load_model_state(model, checkpoint["model"], name=name, allow_shape_mismatch=allow_partial)
    if complete and not allow_partial:
        needed = [k for k in report.missing if _batchformer_runs(args) or not is_batchformer_parameter(k)]
        if needed:
            raise CheckpointError(
                f"{name} lacks {len(needed)} weight tensors this model needs ({_listing(needed, 5)}): "
                "evaluating it would score a partly random model; check the architecture flags (test.py "
                "reads them from the checkpoint's args), or pass --allow_partial_load to evaluate anyway")
    return report


# Flags that change what an evaluation computes or prints without changing the tensors: the BatchFormer
# at inference (and which images it spans), the panoptic post-processing, and the matcher costs and loss
# weights that make the test loss. An evaluation of the checkpoint takes them from its args.
EVALUATION_FLAGS = (
    "eval_bf", "bf_scope", "panoptic_threshold", "aux_loss", "set_cost_class", "set_cost_bbox",
    "set_cost_giou", "cls_loss_coef", "bbox_loss_coef", "giou_loss_coef", "mask_loss_coef", "dice_loss_coef",
    "focal_alpha", "eos_coef", "image_scale",
)
# What the checkpoint's run knew of its data: the data set, the classifier's width and the class names
# (set by main.py from the data; class_names is no flag, only recorded).
DATA_FLAGS = ("dataset_file", "num_classes", "class_names")
# Everything test.py (and every tool that builds a model from a checkpoint) takes from the checkpoint's
# args; the flags that are not here say where and how to run (data paths, device, batch size, the
# training schedule) and come from the command line.
RECORDED_FLAGS = (*STRUCTURAL_FLAGS, *EVALUATION_FLAGS, *DATA_FLAGS)


def evaluation_notice(name: str, saved_args, args: argparse.Namespace) -> str | None:
    """What an evaluation with ``args`` computes otherwise than the checkpoint's own run did (its
    EVALUATION_FLAGS differ), or None. main.py --eval keeps the command line's, as the public code does."""
    if not isinstance(saved_args, (argparse.Namespace, dict)):
        return None
    values = [(flag, recorded_value(saved_args, flag), _plain(getattr(args, flag, _flag_defaults()[flag])))
              for flag in EVALUATION_FLAGS]
    differences = [(flag, saved, run) for flag, saved, run in values if not _same(saved, run)]
    if not differences:
        return None
    return (f"note: {name}: {_listed(differences)}: this evaluation differs from the one its run made "
            "(detections or test loss); test.py takes these flags from the checkpoint")


def adopt_recorded_flags(args: argparse.Namespace, saved_args, given: set[str], name: str,
                         state_dict: dict | None = None) -> list[str]:
    """Give ``args`` the RECORDED_FLAGS values the checkpoint records, except those in ``given``;
    returns notices.

    ``given``: the flags the user typed, which win. The detector comes first: the recorded
    ``--meta_arch``, else the one ``state_dict``'s keys say (``recorded_meta_arch``), and every flag
    neither typed nor recorded takes that detector's default. Structural flags typed here that differ
    from the checkpoint are listed in ``args.arch_overrides`` so that ``load_weights`` takes them as
    meant (the tensors must still fit).
    """
    args.arch_overrides = []
    meta_arch, recognised = recorded_meta_arch(saved_args, state_dict, name)
    notices = [f"{name} {recognised}"] if recognised else []
    if "meta_arch" not in given:
        switch_detector(args, meta_arch, keep=given)
    if not isinstance(saved_args, (argparse.Namespace, dict)):
        built = f"--meta_arch {args.meta_arch} and" if recognised else "the"
        return [*notices, f"{name} records no args: the model is built from {built} command line's flags"]
    adopted, overridden = [], []
    for flag in RECORDED_FLAGS:
        recorded = recorded_value(saved_args, flag, meta_arch)
        if flag in given:
            ours = _plain(getattr(args, flag))
            if not _same(_normalised(flag, ours), _normalised(flag, recorded)):
                overridden.append(flag)
                theirs = f"{flag}={recorded}" if isinstance(recorded, bool) else recorded
                notices.append(f"{_shown(flag, ours)} from the command line overrides the checkpoint's "
                               f"{theirs}")
            continue
        setattr(args, flag, recorded)
        if flag not in _flag_defaults():  # recorded only (class_names): no command line to show
            adopted += [f"({len(recorded)} {flag.replace('_', ' ')})"] if recorded else []
        elif not _same(recorded, _flag_defaults(meta_arch).get(flag)):
            adopted += as_command_line(flag, recorded)
    args.arch_overrides = [flag for flag in overridden if flag in STRUCTURAL_FLAGS]
    shown = " ".join(adopted) if adopted else "none"
    return [f"flags of {name} (from its args): {shown}; every other recorded flag at its default", *notices,
            *_batch_dependence(args, saved_args)]


def _shown(flag: str, value) -> str:
    return " ".join(as_command_line(flag, value)) or f"--{flag} {value}"


def _batch_dependence(args: argparse.Namespace, saved_args) -> list[str]:
    """With --eval_bf an image's result depends on the others of its batch: say so if the batch differs."""
    saved_batch = recorded_value(saved_args, "batch_size")
    if not (args.eval_bf and args.bf) or _same(saved_batch, args.batch_size):
        return []
    return [f"--eval_bf: the BatchFormer mixes the images of each batch, so results depend on --batch_size; "
            f"the checkpoint's run used {saved_batch}, this one {args.batch_size}"]
