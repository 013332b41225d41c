"""The exceptions of msaf_ros: one root, and one-line renderings of any exception.

Every error msaf_ros raises on purpose derives from :class:`MsafRosError`; its message is one
line that says what is wrong and, where it helps, how to fix it. The programs print it
(:func:`msaf_ros.cli.run_cli`) without a traceback.

=========================  =======================================================  ==========
exception                  raised for                                               defined in
=========================  =======================================================  ==========
``ConfigError``            a bad node parameter (names it)                          params
``StartupError``           the node cannot start for another reason                 here
``ImageDecodeError``       an image message that cannot be decoded (a ValueError)   here
``BagError``               a msaf-bag problem the user can fix                      here
``CorruptBagError``        an unreadable input bag                                  here
``SampleDriveError``       the sample drive cannot be found or built                here
``BenchError``             a node benchmark that cannot run                         here
=========================  =======================================================  ==========

``ConfigError`` lives with the parameter table (:mod:`msaf_ros.params`), whose hints it
uses. Imports nothing beyond the standard library.
"""

from __future__ import annotations

import re


class MsafRosError(Exception):
    """Root of msaf_ros's own exceptions; the message is one line for the user."""


class StartupError(MsafRosError):
    """segment_node cannot start (ROS 2 cannot be initialised, ...)."""


class ImageDecodeError(MsafRosError, ValueError):
    """A message cannot be decoded into an RGB image; the message says why.

    ``reason`` is a short tag for counting: 'encoding' (unknown), 'empty' (0 pixels),
    'step' (step below width × bytes per pixel), 'length' (data not height × step bytes),
    'fields' (missing or mistyped fields, odd yuv422 width), 'data' (unreadable data),
    'compressed' (undecodable compressed image), 'too-small' / 'too-large' (outside the
    sizes the node accepts).
    """

    def __init__(self, message: str, reason: str = "fields") -> None:
        super().__init__(message)
        self.reason = reason


class BagError(MsafRosError):
    """A msaf-bag problem the user can fix (missing topic, existing output, bad option)."""


class CorruptBagError(BagError):
    """The input bag cannot be read (truncated, damaged, not a rosbag2)."""


class SampleDriveError(MsafRosError):
    """The sample drive cannot be found or built."""


class BenchError(MsafRosError):
    """A node benchmark cannot go on (the node did not start or died, no frames)."""


def one_line(text: object) -> str:
    """``text`` (or an exception's message; its type name when it has none) with every run
    of whitespace folded to one space."""
    out = re.sub(r"\s+", " ", str(text).strip())
    return out or (type(text).__name__ if isinstance(text, BaseException) else out)


def first_line(e: BaseException, with_type: bool = True) -> str:
    """``'TypeName: first line of the message'`` (the type alone when there is no message);
    ``with_type=False``: the first line only (the type name when there is none)."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    return f"{type(e).__name__}: {lines[0]}" if with_type else lines[0]
