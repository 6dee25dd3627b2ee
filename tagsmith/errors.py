"""Errors that reach users.

Every expected failure is a ``TagsmithError`` whose message is one sentence written for
the person at the terminal. The CLI prints it to stderr and exits 1; nothing else in the
package decides exit codes.
"""

from __future__ import annotations


class TagsmithError(Exception):
    """An expected failure with a message meant for the user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(TagsmithError):
    """The command line itself is wrong (bad option value, conflicting options)."""

    exit_code = 2


class InputError(TagsmithError):
    """A tag, prompt or file the user gave cannot be used."""


class FileFormatError(InputError):
    """A file exists but its contents are not in a format tagsmith reads."""


class ModelError(TagsmithError):
    """A text encoder cannot be found, loaded or used."""


class ModelNotFoundError(ModelError):
    """The model source names nothing that exists locally or in the Hugging Face cache."""


class UnsupportedModelError(ModelError):
    """The file or folder holds a model, but not an SD1.5 CLIP text encoder."""


class UnsafeCheckpointError(ModelError):
    """A pickle checkpoint would need arbitrary code execution to load."""


class CacheError(TagsmithError):
    """The embedding cache cannot be opened or written."""


class DatasetError(TagsmithError):
    """A caption dataset cannot be read or rewritten."""
