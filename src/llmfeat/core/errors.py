"""Every error llmfeat raises on purpose, in one module, each carrying the process exit code it maps to.

Catch ``LlmfeatError`` for all of them, or one of the five bases for a kind (config, input, locked, not found,
failure). The CLI and the ``jobs/*.py`` entry points map them with one function (:func:`exit_code_for`), so a
scheduler sees the same code for the same cause wherever it happens. Subclasses of the builtin exception that
each case used to be (``ValueError``, ``LookupError``, ``FileNotFoundError``) keep ``except`` clauses written
against those working.

Exit codes (README "Exit codes"): 0 ok, 1 failure, 2 configuration error, 3 unusable input, 4 completed with
quarantined rows, 5 data directory locked, 6 id or category not found.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ExitCode",
    "LlmfeatError",
    "ConfigError",
    "ModelMismatchError",
    "IndexModelMismatchError",
    "ScoringModelError",
    "InputError",
    "MissingInputError",
    "VectorTableError",
    "MixedModelsError",
    "IndexNotFoundError",
    "TooLittleDataError",
    "LockedError",
    "NotFoundError",
    "UnknownItemError",
    "UnknownUserError",
    "UnknownCategoryError",
    "FailureError",
    "CorruptIndexError",
    "RetrievalError",
    "ReloadError",
    "StageFailedError",
    "exit_code_for",
    "describe",
]


class ExitCode(IntEnum):
    """Process exit codes, so a scheduler can tell the cases apart."""

    OK = 0
    FAILURE = 1
    CONFIG_ERROR = 2
    INPUT_ERROR = 3
    """An input file is unusable (missing, wrong format, missing column): nothing was written."""
    QUARANTINED = 4
    """The run completed, but some input rows were quarantined."""
    LOCKED = 5
    """Another run holds the data directory."""
    NOT_FOUND = 6
    """An id or category asked for is not in the index (or has no vector)."""


class LlmfeatError(Exception):
    """Base of every error llmfeat raises on purpose. ``str()`` is the message; ``label`` names the kind;
    ``hints`` are further lines for a person (what to do next)."""

    exit_code: ExitCode = ExitCode.FAILURE
    label: str = "failure"
    hints: tuple[str, ...] = ()

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


# --- 2: configuration ---------------------------------------------------------------------------------------


class ConfigError(LlmfeatError, ValueError):
    """The configuration is invalid (unknown key, wrong type, impossible value, unknown choice)."""

    exit_code = ExitCode.CONFIG_ERROR
    label = "configuration error"


class ModelMismatchError(ConfigError):
    """Vectors of one model id would be mixed with another's (an embedding table, an index, a query)."""


class IndexModelMismatchError(ModelMismatchError):
    """The index was built from another model's vectors than the queries come from."""


class ScoringModelError(ConfigError):
    """No trained model, or one that does not fit the published features."""


# --- 3: input -----------------------------------------------------------------------------------------------


class InputError(LlmfeatError, ValueError):
    """An input file is not what its loader expects: fail fast, naming the file and the column."""

    exit_code = ExitCode.INPUT_ERROR
    label = "input error"


class MissingInputError(InputError, FileNotFoundError):
    """An input path (source directory, mapping file, model directory, a stage's upstream table) does not
    exist: the message names it and the command that writes it, where there is one."""


class VectorTableError(InputError):
    """An embedding table cannot be used as it is (missing or ragged vectors)."""


class MixedModelsError(ModelMismatchError, VectorTableError):
    """The current rows of one embedding table come from more than one model (a set mismatch: exit 2)."""


class IndexNotFoundError(InputError, FileNotFoundError):
    """No published index (or not the version asked for)."""


class TooLittleDataError(InputError):
    """Not enough labelled interactions to train (``train.min_interactions``)."""


# --- 5: locked ----------------------------------------------------------------------------------------------


class LockedError(LlmfeatError, RuntimeError):
    """Another run holds the data directory."""

    exit_code = ExitCode.LOCKED
    label = "locked"


# --- 6: not found -------------------------------------------------------------------------------------------


class NotFoundError(LlmfeatError, LookupError):
    """An id or category the index (or the user vectors) does not know. ``str()`` is the message."""

    exit_code = ExitCode.NOT_FOUND
    label = "not found"


class UnknownItemError(NotFoundError):
    pass


class UnknownUserError(NotFoundError):
    pass


class UnknownCategoryError(NotFoundError):
    pass


# --- 1: failures that are not the caller's to fix -----------------------------------------------------------


class FailureError(LlmfeatError, RuntimeError):
    """Something broke that a rerun (or an operator) has to fix: corrupt files, a failed service call."""


class CorruptIndexError(FailureError):
    """A version's files do not match its manifest (size, checksum or count)."""


class RetrievalError(FailureError):
    """Feast's point-in-time retrieval was asked or answered something unusable."""


class ReloadError(FailureError):
    """The published version could not be loaded; the previous one is still served."""


class StageFailedError(FailureError):
    """An unexpected exception inside a stage, named so the operator knows where to resume."""

    def __init__(self, stage: str, cause: BaseException, hints: tuple[str, ...] = ()) -> None:
        self.stage, self.cause, self.hints = stage, cause, hints
        super().__init__(f"stage {stage} failed: {type(cause).__name__}: {cause}")


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code of an exception: its own for llmfeat's errors, FAILURE for anything else."""
    if isinstance(exc, LlmfeatError):
        return exc.exit_code
    return ExitCode.FAILURE


def describe(exc: BaseException, where: str) -> tuple[ExitCode, str]:
    """Exit code and one-line message for an exception that ended ``where`` (a command or a job): llmfeat's
    errors by their kind, anything else as a failure of ``where`` with the exception's type."""
    if isinstance(exc, LlmfeatError):
        return exc.exit_code, f"{exc.label}: {exc}"
    return ExitCode.FAILURE, f"failure: {where} failed: {type(exc).__name__}: {exc}"
