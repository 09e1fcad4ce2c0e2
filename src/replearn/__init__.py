"""replearn: deep metric learning from class folders to clustered images."""

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("replearn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# faiss' loader tries its CPU-specific builds in turn and logs each miss ("Could not load library with
# AVX512 support") at INFO, which users read as errors; its warnings still show. Set here, so the CLI,
# the ZenML steps and DVC's commands are all quiet whoever configures logging.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
