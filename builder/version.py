"""The version of build-image, in a leaf module: the plan cache keys on it without importing the package API."""

__version__ = "0.1.0"
