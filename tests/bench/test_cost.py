"""The cost meter's CPU peak memory: each cell measured on its own, never a misleading 0."""

import sys

import pytest
import torch
from torch import nn

from testtime.bench import cost

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux /proc")


@linux
def test_cpu_peak_is_the_cells_own_not_bounded_by_an_earlier_peak():
    meter = cost.CostMeter(nn.Conv2d(3, 4, 3), channels=3)
    big = torch.ones(200 * 2**20 // 4)  # an earlier peak of 200 MiB, then freed
    big.add_(1)
    del big
    before = meter.snapshot()
    cell = torch.ones(64 * 2**20 // 4)  # the cell allocates 64 MiB (touched), then frees it
    cell.add_(1)
    del cell
    mb = meter.since(before, n_images=10)["peak_mem_mb"]
    # under ru_maxrss (the old measure) this read 0: the cell stayed below the 200 MiB peak
    assert 60 <= mb < 150


@linux
def test_a_cell_reusing_freed_heap_memory_still_counts_it():
    def touch_many():  # 60 MiB in 60 KiB tensors: below glibc's mmap threshold, from the heap
        xs = [torch.ones(15 * 2**10) for _ in range(1024)]
        for x in xs:
            x.add_(1)

    meter = cost.CostMeter(nn.Conv2d(3, 4, 3), channels=3)
    touch_many()  # an earlier cell frees its heap memory; glibc would keep it in the resident set
    before = meter.snapshot()
    touch_many()
    assert meter.since(before, n_images=1)["peak_mem_mb"] >= 45


@linux
def test_peak_rss_reset_goes_back_to_the_current_rss():
    x = torch.ones(100 * 2**20 // 4)
    x.add_(1)
    del x
    assert cost.reset_peak_rss()
    assert cost.peak_rss_bytes() - cost.rss_bytes() < 8 * 2**20


def test_no_reset_gives_none_not_zero(monkeypatch):
    monkeypatch.setattr(cost, "reset_peak_rss", lambda: False)
    meter = cost.CostMeter(nn.Conv2d(3, 4, 3), channels=3)
    before = meter.snapshot()
    assert meter.since(before, n_images=1)["peak_mem_mb"] is None


def test_cuda_device_leaves_peak_to_cuda_counter():
    meter = cost.CostMeter(nn.Conv2d(3, 4, 3), channels=3)
    assert meter.since(meter.snapshot(), n_images=1, device="cuda:0")["peak_mem_mb"] is None
