"""Imported once by the forkserver, so that each worker forks with torch & co. already loaded
(~10 s of imports on a GPU host, paid once instead of per worker).

Nothing here may initialise CUDA: a process forked after that cannot use the GPU. torch is
told to answer is_available()/device_count() from NVML, and bitsandbytes, which asks for the
device's compute capability at import (a question that initialises CUDA), gets the answer
from NVML too. Workers check that they are not in a "bad fork"; if they are, the pool falls
back to spawning fresh interpreters.
"""

import os

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

import torch  # noqa: E402


def _nvml_capability(device=None) -> tuple[int, int]:
    import pynvml

    index = getattr(device, "idx", device) or 0
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(index))
        return tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    finally:
        pynvml.nvmlShutdown()


_real_capability = torch.cuda.get_device_capability
torch.cuda.get_device_capability = _nvml_capability
try:
    import bitsandbytes  # noqa: E402, F401
    import peft  # noqa: E402, F401
    import transformers  # noqa: E402, F401
    import transformers.models.llama.modeling_llama  # noqa: E402, F401
    import transformers.models.qwen2.modeling_qwen2  # noqa: E402, F401

    import bench.child  # noqa: E402, F401
    import bench.trial  # noqa: E402, F401
finally:
    torch.cuda.get_device_capability = _real_capability

CUDA_UNTOUCHED = not torch.cuda.is_initialized()
