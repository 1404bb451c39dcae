import pytest
import torch
from torch import nn

from compress.profile.memory import RssSampler, dir_bytes, weight_bytes
from compress.testing import tiny_llama


def _manual_bytes(model) -> int:
    # named_parameters() yields a tied Parameter once; Llama's only buffer (inv_freq) is derived
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_tied_embeddings_counted_once():
    model = tiny_llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    naive = sum(
        p.numel() * p.element_size() for _, p in model.named_parameters(remove_duplicate=False)
    )
    assert weight_bytes(model) == _manual_bytes(model) < naive


def test_shared_storage_counted_once_and_inv_freq_skipped():
    model = tiny_llama()
    # a distinct Parameter object over the same storage still counts once
    model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach())
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert weight_bytes(model) == _manual_bytes(model) - model.lm_head.weight.nbytes
    inv = [n for n, _ in model.named_buffers() if n.endswith("inv_freq")]
    assert inv  # present, non-persistent, not counted


def test_counts_int8_buffers():
    class Q(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("qweight", torch.zeros(64, 32, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(64, dtype=torch.float16))
            self.register_buffer("cache", torch.ones(1000), persistent=False)
            self.bias = nn.Parameter(torch.zeros(64))

    assert weight_bytes(Q()) == 64 * 32 * 1 + 64 * 2 + 64 * 4


def test_rss_sampler_sees_large_allocation():
    # A fresh anonymous mapping is always new resident pages once written: a torch or malloc
    # allocation may instead reuse memory the allocator already holds (seen in the full suite).
    import mmap

    size = 200 * 1024 * 1024
    with RssSampler() as s:
        buf = mmap.mmap(-1, size)
        for off in range(0, size, mmap.PAGESIZE):  # touch every page
            buf[off] = 1
    assert s.peak - s.start >= 150 * 1024 * 1024
    assert s.samples >= 2
    buf.close()


def test_dir_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 50)
    (tmp_path / "link").symlink_to(tmp_path / "a")  # same inode: not counted twice
    assert dir_bytes(tmp_path) == 150
    assert dir_bytes(tmp_path / "a") == 100


@pytest.mark.gpu
def test_cuda_memory_peaks_see_an_allocation():
    from compress.profile.memory import cuda_memory

    with cuda_memory("cuda") as peaks:
        x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
        del x
    assert peaks.peak_allocated >= 64 * 2**20
    assert peaks.peak_reserved >= peaks.peak_allocated


def test_rss_peak_sees_a_spike_freed_before_exit():
    """The kernel's peak counter (VmHWM, reset on entry) catches memory touched and released
    between two samples, with no sampling thread competing with what is being timed."""
    import mmap

    from compress.profile.memory import reset_peak_rss

    if not reset_peak_rss():
        import pytest

        pytest.skip("no /proc/self/clear_refs here")
    size = 200 * 1024 * 1024
    with RssSampler() as s:
        buf = mmap.mmap(-1, size)
        for off in range(0, size, mmap.PAGESIZE):
            buf[off] = 1
        buf.close()  # released before the region ends
    assert s.peak - s.start >= 150 * 1024 * 1024
