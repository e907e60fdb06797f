"""task=main gives a finished step's cached GPU memory back (grid cells share one GPU: varbench/tasks/main.py)."""

import pytest
import torch

from varbench.tasks.main import release_cached_gpu_memory


def test_a_process_that_never_used_cuda_gets_no_cuda_context_from_it():
    if torch.cuda.is_initialized():
        pytest.skip("an earlier test in this process used CUDA")
    release_cached_gpu_memory()  # a CPU-only step (a tokenize on CPU, say) must not open a context on a shared GPU
    assert not torch.cuda.is_initialized()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_finished_step_s_cached_blocks_go_back_to_the_device():
    x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # 256 MiB, then freed into the cache
    del x
    held = torch.cuda.memory_reserved()
    assert held >= 256 << 20
    release_cached_gpu_memory()
    assert torch.cuda.memory_reserved() <= held - (256 << 20)
