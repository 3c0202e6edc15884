"""Tourbillon: circular autoencoders trained by recirculation, and their variants."""

from .config import VARIANTS, Config, get_variant, resolve
from .errors import CheckpointError, ConfigError, DataError, TourbillonError
from .model import (
    CircularBlock,
    Tourbillon,
    TourbillonBuildingBlockConv,
    TourbillonBuildingBlockLinear,
    TourbillonConv,
    TourbillonLinear,
)

__all__ = [
    "VARIANTS", "Config", "get_variant", "resolve",
    "CheckpointError", "ConfigError", "DataError", "TourbillonError",
    "CircularBlock", "Tourbillon",
    "TourbillonBuildingBlockConv", "TourbillonBuildingBlockLinear",
    "TourbillonConv", "TourbillonLinear",
]
__version__ = "0.1.0"
