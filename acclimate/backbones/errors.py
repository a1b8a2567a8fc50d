"""The one error type of `acclimate.backbones`."""

from __future__ import annotations

from acclimate.errors import AcclimateError


class BackboneError(AcclimateError):
    """A backbone cannot be built or its weights cannot be loaded.

    The message is one line that names the model or file involved and says how to fix it.
    """
