"""The errors of reading one input file."""


class MediaError(Exception):
    """A problem with one input file, worded for the person reading the ``error`` column."""
