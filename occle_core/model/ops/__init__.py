"""Kernels of the network, apart from its ``nn.Module`` s (as mamba-ssm splits ``ops/`` from ``modules/``).

- :mod:`.linear_scan`: the radix parallel scan of ``h_t = a_t * h_{t-1} + x_t`` and its differentiable wrapper.
- :mod:`.selective_scan`: Mamba's selective scan (pure torch, the step-by-step reference, the mamba-ssm CUDA
  kernel) and the one place the scan backend is chosen.
"""
