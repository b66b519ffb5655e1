"""Every failure a user can see is an `LmscopeError`: it says what was expected, what was
found, and how to fix it. The CLI prints the message (exit 1) without a traceback."""

from __future__ import annotations


class LmscopeError(Exception):
    """Base class of every user-facing lmscope error."""


class ModelNotFound(LmscopeError):
    """A model name, path or hub id could not be resolved."""


class UnsupportedArchitecture(LmscopeError):
    """The model's family is not in the architecture table (see `lmscope.engine.arch`)."""


class SiteError(LmscopeError):
    """A site name, layer, neuron, head or position is malformed or out of range."""


class InputError(LmscopeError):
    """A prompt, vector, value or option is malformed (empty, wrong width, non-finite, too long)."""


class ArtifactError(LmscopeError):
    """A saved artifact is missing, corrupt, or was made for another model."""


class EngineError(LmscopeError):
    """The engine cannot follow a forward (e.g. it cannot tell which absolute positions a
    forward computes): an incompatibility with the installed transformers, never a user error."""
