"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""


class BenchError(Exception):
    """A user-facing error (bad config, missing data, corrupt file) naming the problem."""
