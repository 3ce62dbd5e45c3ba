"""Shared test helpers: fixture paths and offline settings."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The subprocesses the tests start (torchrun ranks, CLI runs, DataLoader workers) inherit one OpenMP thread too: two
# ranks of two threads each on 2 cores made a step many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The whole suite runs torch on one intra-op thread: its tensors are tiny, so on 2 shared cores thread handshakes
    cost more than the ops, and the subprocess runs (OMP_NUM_THREADS=1) need the same kernels for bitwise-equal beams."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
