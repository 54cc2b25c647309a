"""The errors a user can cause, each reported by the stages as one line naming the culprit.

Kept in a module of their own so that a stage depends (for DVC) on the modules it really
uses, not on every module that defines an error type.
"""


class ConfigError(ValueError):
    """A params file or section is invalid. The message is one line naming the key."""


class DataError(ValueError):
    """The data on disk is unusable; the message names the files."""


class BackboneError(ValueError):
    """Unknown backbone, unreadable weights or weights that do not fit the architecture."""


class FingerprintMismatch(ValueError):
    """The feature store was made from other data, backbone or preprocessing."""


def image_too_large(err: Exception) -> str:
    """What is wrong with an image whose declared size is over PIL's decompression-bomb
    limit (``PIL.Image.MAX_IMAGE_PIXELS``): the same words wherever an image is decoded
    (download's checks, extraction, training, scoring, predict). Decoding it could take
    gigabytes; the header alone says so, so nothing is decoded."""
    return f"image too large to decode ({err}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS"
