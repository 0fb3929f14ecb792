"""Pure PyTorch networks of DeltaTok / DeltaWorld; state-dict keys match the official release."""

from .config import ModelConfig, preset
from .loading import WeightFileError, load_published, read_state_dict
from .store import ModelDirError, default_model_dir, load_model, read_manifest, write_manifest
from .world_model import WorldModel

__all__ = [
    "ModelConfig",
    "ModelDirError",
    "WeightFileError",
    "WorldModel",
    "default_model_dir",
    "load_model",
    "load_published",
    "preset",
    "read_manifest",
    "read_state_dict",
    "write_manifest",
]
