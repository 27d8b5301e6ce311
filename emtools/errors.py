"""The one exception type that the CLI layer turns into a one-line error message."""


class EmError(Exception):
    """A problem with the user's input or environment, described in one line.

    The CLI prints ``em-<tool>: error: <message>`` and exits 1; no traceback unless ``--debug``.
    Library functions raise it for bad input (wrong shape, dtype, metadata mismatch).
    """
