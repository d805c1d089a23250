"""How degrade-flow splits per-image work into tasks."""

from realsr.flows.degrade import batches, kernelgan_batches


def test_cheap_stages_go_in_about_eight_tasks():
    assert batches(list(range(5)), None) == [[i] for i in range(5)]
    assert [len(b) for b in batches(list(range(20)), None)] == [3] * 6 + [2]
    assert max(len(b) for b in batches(list(range(1000)), None)) == 32
    assert batches(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


def test_kernelgan_trains_an_even_share_per_worker(monkeypatch):
    monkeypatch.setenv("REALSR_DASK_WORKERS", "2")
    assert [len(b) for b in kernelgan_batches(list(range(20)), None)] == [10, 10]
    assert [len(b) for b in kernelgan_batches(list(range(40)), None)] == [16, 16, 8]  # memory cap
    assert [len(b) for b in kernelgan_batches(list(range(3)), None)] == [2, 1]
    assert [len(b) for b in kernelgan_batches(list(range(5)), 5)] == [5]
    monkeypatch.setenv("REALSR_DASK_WORKERS", "8")
    assert [len(b) for b in kernelgan_batches(list(range(4)), None)] == [1, 1, 1, 1]
