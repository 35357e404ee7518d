"""drpo: Drifting Preference Optimization for one-step text-to-image generators."""

import logging as _logging

__version__ = "0.1.0"


class _NoTorchvisionAdvice(_logging.Filter):
    """drpo never installs torchvision (its wheel replaces the CPU torch build). diffusers imports
    transformers' image processors at import time, and transformers then advises installing
    torchvision in every job's log; the Pil processors it falls back to are the ones drpo uses."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionAdvice())
