"""synthimg: does training on generated images beat training on retrieved real ones?

The package turns Geng et al., "The Unmet Promise of Synthetic Training Images"
(NeurIPS 2024) into a reproducible tool. Heavy libraries are imported lazily by
the stages that need them, so importing ``synthimg`` is cheap.
"""

__version__ = "0.1.0"

from synthimg.errors import SynthimgError

__all__ = ["SynthimgError", "__version__"]
