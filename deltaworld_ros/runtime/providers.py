"""Which onnxruntime execution providers can run on this machine, asked quietly.

onnxruntime-gpu lists TensorRT and CUDA wherever it is installed; a session that asks for them
on a machine without their libraries or a GPU prints a screenful of red errors before it falls
back to the CPU. Instead each GPU provider is probed first, without a session: the CUDA and
cuDNN libraries of NVIDIA's pip wheels (`make gpu`) are loaded if present, the driver must see
a device, and the provider's own library must load (that is, all its CUDA libraries resolve).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from functools import cache
from pathlib import Path

import onnxruntime as ort

GPU_PROVIDERS = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}
INSTALL_HINT = "install them with `make gpu` (pip wheels) or a system CUDA"


@cache
def load_pip_cuda_libraries() -> str:
    """Load the CUDA/cuDNN libraries of NVIDIA's pip wheels (onnxruntime-gpu[cuda,cudnn]) before
    any session, so the providers find them without LD_LIBRARY_PATH; onnxruntime's loader
    prints what it misses, which is kept as the return value instead."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime < 1.21: only the system's libraries
        return ""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            preload(cuda=True, cudnn=True, directory="")
        except (OSError, RuntimeError) as err:
            print(err)
    return printed.getvalue()


@cache
def cuda_device_problem(device_id: int = 0) -> str | None:
    """None if the NVIDIA driver sees GPU `device_id`, else why not."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    count = ctypes.c_int(0)
    status = driver.cuInit(0)
    if status != 0:
        return f"the NVIDIA driver did not initialise (cuInit error {status})"
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "the NVIDIA driver sees no GPU"
    if device_id >= count.value:
        return f"GPU {device_id} asked for, the NVIDIA driver sees {count.value} GPU(s)"
    return None


@cache
def provider_problem(provider: str, device_id: int = 0) -> str | None:
    """None if `provider` can run here (a GPU provider: on GPU `device_id`), else one short
    reason; no session is created."""
    if provider not in ort.get_available_providers():
        return f"not in this onnxruntime build ({ort.get_device()} {ort.__version__})"
    library = GPU_PROVIDERS.get(provider)
    if library is None:
        return None
    problem = cuda_device_problem(device_id)
    if problem is not None:
        return problem
    load_pip_cuda_libraries()
    try:
        ctypes.CDLL(str(Path(ort.__file__).parent / "capi" / library))
    except OSError as err:
        missing = str(err).split(":")[0] if "cannot open shared object" in str(err) else str(err)
        return f"its CUDA libraries are missing ({missing}); {INSTALL_HINT}"
    return None
