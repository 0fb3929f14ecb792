"""Pure PyTorch networks of DeltaTok / DeltaWorld; state-dict keys match the official release.

Names load on first use (PEP 562): the ONNX Runtime engine reads configs and manifests from
here without importing torch (about 200 MiB of resident memory it does not need).
"""

from importlib import import_module

_HOMES = {
    "ModelConfig": "config",
    "preset": "config",
    "WeightFileError": "loading",
    "load_published": "loading",
    "read_state_dict": "loading",
    "ModelDirError": "store",
    "default_model_dir": "store",
    "load_model": "store",
    "read_manifest": "store",
    "write_manifest": "store",
    "WorldModel": "world_model",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_HOMES[name]}", __name__), name)
