"""Suite-wide settings: one torch thread (the CI machine has 2 shared cores; OpenMP spinning
across helpers' threads made small training steps 10-20x slower)."""

import torch

torch.set_num_threads(1)
