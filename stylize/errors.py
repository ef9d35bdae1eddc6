"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class StylizeError(Exception):
    """A problem the user can fix (bad input, missing weights, unknown model); never a bug."""
