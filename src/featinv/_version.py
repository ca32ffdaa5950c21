"""The installed featinv's version: the lowest module, so every other one may import it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featinv")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
