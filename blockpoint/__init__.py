"""blockpoint: durable, crash-safe checkpoints for stateful Ray pipeline stages.

This package holds only the command line (``blockpoint.cli``) and the demo: it sits at the
top of the import order (blockstore <- stages <- scheduler <- blockpoint).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
