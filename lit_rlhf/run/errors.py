"""User-input errors as one message, without a traceback; bugs keep theirs.

A bad data line, a missing folder or a bad config value is the user's to fix: ``train.py`` prints
``lit_rlhf: error: <message>`` on stderr and exits with status 2 (:func:`exit_on_user_error`). Anything
else is a bug and propagates with its traceback. ``HYDRA_FULL_ERROR=1`` shows the full trace of a user
error too, as Hydra does for its own errors. :func:`user_message` is the pure classification;
:func:`config_errors_exit_2` gives a command line Hydra cannot compose the same status.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import (
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

log = logging.getLogger("lit_rlhf")
EXIT_USER_ERROR = 2  # the usage-error status of argparse (Hydra's command-line parser uses it too)
FULL_ERROR_HINT = "set HYDRA_FULL_ERROR=1 for the full stack trace"
_SIGNATURE = re.compile(r"unexpected keyword argument|missing \d+ required|takes (no|\d+ positional) arg")
_FULL_KEY = re.compile(r"^full_key: (\S+)$", re.MULTILINE)
_MISSING = re.compile(r"Missing mandatory value: (\S+)")
_UNPICKLER = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\s+Please use|\n|$)")


class UserError(CompactHydraException):
    """A user-input error carried through a Hydra multirun: Hydra reports it without a traceback."""


def user_message(exc: BaseException) -> str | None:
    """The message to show for a user-input error, or None if ``exc`` is a bug (keep its traceback).

    User errors: ``ValueError`` (incl. ``DataFormatError``: ``file:line: field 'x': …``), ``OSError``
    (a missing file or folder), ``KeyError`` raised with a sentence (not a bare key), ``FloatingPointError``
    (the NaN policy's stop), Lightning's ``MisconfigurationException`` (e.g. ``trainer.accelerator=gpu``
    without a GPU), ``ImportError`` that says what to ``pip install``, omegaconf's missing values
    and failed interpolations (named by their config key), and Hydra's errors — an
    ``InstantiationException`` is unwrapped to its cause, with the config key it was instantiating.

    Args:
        exc: The exception that ended the task function.

    Returns:
        One message (no traceback), or None for anything else.
    """
    if isinstance(exc, InstantiationException):
        return _instantiation_message(exc)
    if isinstance(exc, OmegaConfBaseException):
        return _omegaconf_message(exc)
    if isinstance(exc, CompactHydraException):  # e.g. a bad override in `pipeline.<stage>`
        cause = exc.__cause__
        extra = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else ""
        return f"{exc}{extra}".strip()
    if isinstance(exc, KeyError):  # str(KeyError) quotes its argument; a bare key (a lookup bug) has no space
        text = str(exc.args[0]) if exc.args else ""
        return text if " " in text else None
    if isinstance(exc, ImportError):
        return str(exc) if "pip install" in str(exc) else None
    if isinstance(exc, pickle.UnpicklingError):
        return _checkpoint_message(exc)
    if isinstance(exc, (ValueError, OSError, FloatingPointError, MisconfigurationException)):
        return str(exc) or type(exc).__name__
    return None


def _instantiation_message(exc: InstantiationException) -> str | None:
    """The cause of a failed ``instantiate`` call, named by the config node it was building."""
    match = _FULL_KEY.search(str(exc))
    key = match.group(1) if match else None
    cause = exc.__cause__
    if isinstance(cause, ImportError) and "pip install" in str(cause):  # a missing extra, named by its key
        return str(cause) if key is None or key in str(cause) else f"{cause} (in config {key})"
    if cause is None or isinstance(cause, (ImportError, AttributeError)):  # a `_target_` that is not there
        return str(exc)
    if isinstance(cause, TypeError) and _SIGNATURE.search(str(cause)):  # a key the constructor does not take
        return f"{key}: {cause}" if key else str(exc)
    inner = user_message(cause)
    if inner is None:
        return None
    return inner if key is None or key in inner else f"{inner} (in config {key})"


def _checkpoint_message(exc: pickle.UnpicklingError) -> str | None:
    """A checkpoint Lightning was loading (``checkpoint_path`` of a frame it passed) that
    ``torch.load(weights_only=True)`` refused; None if the error came from elsewhere (a bug)."""
    path, tb = None, exc.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_locals.get("checkpoint_path", path)
        tb = tb.tb_next
    if path is None:
        return None
    match = _UNPICKLER.search(str(exc))
    detail = match.group(1).strip() if match else str(exc).splitlines()[0]
    return (
        f"cannot resume from {path}: torch.load(weights_only=True) refuses it ({detail}), so nothing in it "
        "was run; it holds Python objects beyond tensors and plain data, or is not a checkpoint. Check "
        "ckpt_path (or delete the run folder's checkpoints/last.ckpt)"
    )


def _omegaconf_message(exc: OmegaConfBaseException) -> str | None:
    """A missing (``???``) value or a failed interpolation, named by its config key and what to set."""
    first = str(getattr(exc, "msg", None) or exc).splitlines()[0]
    key = getattr(exc, "full_key", None)
    missing = _MISSING.search(first)
    if isinstance(exc, MissingMandatoryValue) or (isinstance(exc, InterpolationResolutionError) and missing):
        name = missing.group(1) if missing else key
        needed = f" (needed by {key})" if key and key != name else ""
        return f"config key {name} has no value{needed}; set it on the command line: {name}=…"
    if isinstance(exc, (InterpolationResolutionError, ValidationError)):
        return f"{key}: {first}" if key else first
    return None


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0)


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Around the task function: a user error becomes one message; a bug keeps its traceback.

    Single run (and each Lightning DDP process, which runs as one): ``lit_rlhf: error: <message>`` on
    stderr and exit status 2, so a DDP child with bad input exits non-zero and Lightning stops the others.
    Inside a ``-m`` sweep the job fails like any Hydra job — the message is logged at once (console and
    the job's log), the other jobs still run, and Hydra reports the first failure at the end without a
    traceback (status 1). With ``HYDRA_FULL_ERROR=1`` the original exception propagates unchanged.
    """
    try:
        yield
    except Exception as exc:
        message = user_message(exc)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        rank = _rank()
        prefix = "lit_rlhf: error: " if rank == 0 else f"lit_rlhf: error (rank {rank}): "
        if _in_multirun():
            log.error("%s%s", prefix, message)
            raise UserError(prefix + message) from None  # the original stays in __context__
        sys.stderr.write(f"{prefix}{message}\n({FULL_ERROR_HINT})\n")
        sys.stderr.flush()
        sys.exit(EXIT_USER_ERROR)


@contextmanager
def config_errors_exit_2() -> Iterator[None]:
    """Around ``main()``: a command line Hydra cannot compose (an unknown group option such as
    ``+transform=logsigmod``, an override of a key that does not exist) exits with status 2 too.

    Hydra reports those itself, before the task function runs — its message lists the valid options —
    and exits 1; that exit is raised while Hydra handles the error, which is therefore its ``__context__``.
    Status 1 stays for everything else: a bug's traceback, and a ``-m`` sweep whose jobs failed.
    """
    try:
        yield
    except SystemExit as done:
        error = done.__context__
        if done.code == 1 and isinstance(error, CompactHydraException) and not isinstance(error, UserError):
            raise SystemExit(EXIT_USER_ERROR) from None
        raise
