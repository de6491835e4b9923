"""Suite-wide settings.

Tests use one intra-op thread: their tensors are tiny, and on a loaded 2-core machine
OpenMP's thread hand-offs made small ops up to 100x slower. VIMPAC_TEST_THREADS overrides.
"""

import os

import torch

torch.set_num_threads(int(os.environ.get("VIMPAC_TEST_THREADS", "1")))
