"""The one error type of capture and drift: bad input, reported as one line (exit status 2)."""


class CaptureError(ValueError):
    """A model, weights file, text or image folder that cannot be used; the message is one line."""
