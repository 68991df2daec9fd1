"""Typed exceptions. Library code raises these; only ``cli.py`` turns them into messages.

Every user-facing error reads as one line: what is wrong, where (file, case, field), and what to do.
"""

from __future__ import annotations


class SynthaugError(Exception):
    """Base class of every error synthaug raises on purpose."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The whole error as one line: ``where: what; fix``."""
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text = f"{text}; {self.fix}"
        return " ".join(text.split())


class InputError(SynthaugError):
    """The user's input (file, manifest, option) is wrong. The CLI exits with code 2."""

    exit_code = 2


class ConfigError(InputError):
    """A configuration file, preset or override is invalid."""


class ManifestError(InputError):
    """A manifest cannot be read or a case record is invalid."""


class ImageError(InputError):
    """An image file is missing, unreadable, or not a finite 3D volume."""


class PicaiError(InputError):
    """A PI-CAI folder or marksheet does not have the expected layout."""


class GenerationError(SynthaugError):
    """Generating synthetic volumes failed (not the user's input: the CLI exits with code 1)."""


class TrainingInterrupted(SynthaugError):
    """SIGINT/SIGTERM arrived during training; a checkpoint was written and ``--resume`` continues from it."""

    exit_code = 130
