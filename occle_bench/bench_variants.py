"""Shared against decoupled encoders: the cost of the published layout at the tiny widths, on the CPU.

Two networks on the same batch: ``tiny`` (one image encoder and one LiDAR encoder for both branches, ``sem3d``
at the feature resolution) and ``tiny_decoupled`` (``model.shared_encoders: false``: the semantic branch's own
2D UNet and sparse 3D UNet, ``sem3d_head: full``). The batch has the shape of the experiment's training runs
(``config/train_synthetic_tiny.yaml``: the 128 x 128 x 16 grid, one 188 x 620 image, 40k points uniform in the
grid; ``--quick``: 32 x 32 x 8, 48 x 96, 3k points) and random targets, so every loss term runs.

Per variant: parameters and FLOPs of one forward (:func:`~occle_core.model.occle.model_summary` on this batch),
the forward with the training outputs (eval mode, no autograd), forward + losses + backward (train mode), and the
memory autograd keeps for the backward (the distinct storages of the tensors saved by the forward + losses, read
with ``saved_tensors_hooks``: exact and independent of the allocator, unlike an RSS rise in a process that has
already run the other variant). One process, one intra-op thread (the tiny training setting on a
shared CPU); medians of ``repeats`` runs, the variants taken in turn (round robin) so that load from other
processes hits both alike; the 1-minute load average is recorded.
"""

from __future__ import annotations

import os
import time

import torch

from occle_bench.common import Check, Section, Table, summarize, time_fn

__all__ = ["VARIANTS", "run"]

VARIANTS = ("tiny", "tiny_decoupled")


def _batch(cfg, num_points: int):
    """A synthetic batch of ``cfg``'s shape with every training target (see ``synthetic_targets``)."""
    from occle_core.model.occle import synthetic_batch, synthetic_targets

    batch = synthetic_batch(cfg, num_points)
    return synthetic_targets(batch, cfg.data.classes().num_classes, cfg.data.voxel_grid().shape, seed=1)


def saved_for_backward_mb(fn) -> float:
    """MiB of the distinct storages autograd saves for the backward while ``fn()`` runs (activations, and the
    parameters the backward reads)."""
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        sizes[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes.values()) / 2**20


def run(quick: bool = False) -> Section:
    """The variants table: parameters, FLOPs, forward and forward + backward medians, RSS rise."""
    from occle_core.config import load_config
    from occle_core.losses import compute_losses
    from occle_core.model.occle import OccLE, model_summary
    from occle_core.resources import config_path

    start = time.perf_counter()
    if quick:
        grid = {"origin": [0.0, -3.2, -1.6], "voxel_size": 0.2, "shape": [32, 32, 8]}
        data, num_points, repeats = {"grid": grid, "image_size": [48, 96]}, 3_000, 2
    else:
        data, num_points, repeats = {}, 40_000, 5
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        calls, memory, summaries = {}, {}, {}
        for name in VARIANTS:
            cfg = load_config(config_path("train_synthetic_tiny.yaml"), {"data": data, "model": {"size": name}})
            cfg.model.lidar_backend = "dense"  # the CPU path, whatever is installed
            batch = _batch(cfg, num_points)
            grid_shape = cfg.data.voxel_grid().shape
            torch.manual_seed(0)
            model = OccLE(cfg)
            summaries[name] = model_summary(cfg, batch)

            def forward(m=model, b=batch) -> None:
                m.eval()
                with torch.no_grad():
                    m(b)

            def loss(m=model, b=batch, loss_cfg=cfg.loss) -> torch.Tensor:
                m.train()
                m.zero_grad(set_to_none=True)
                return compute_losses(m(b), b, loss_cfg, empty_index=m.empty_index)[0]

            def step(loss=loss) -> None:
                loss().backward()

            step()  # warm-up (oneDNN kernels, ray layouts)
            memory[name] = saved_for_backward_mb(loss)
            calls[name] = (forward, step)
        samples: dict[str, dict[str, list[float]]] = {n: {"forward": [], "step": []} for n in VARIANTS}
        for _ in range(repeats):  # round robin over the variants
            for name, (forward, step) in calls.items():
                samples[name]["forward"].append(time_fn(forward, 1, warmup=0).median)
                samples[name]["step"].append(time_fn(step, 1, warmup=0).median)
    finally:
        torch.set_num_threads(threads)
    load = round(os.getloadavg()[0], 2)
    rows = []
    for name in VARIANTS:
        s = summaries[name]
        groups = s["params_by_group"]
        rows.append(
            {
                "variant": name,
                "params_k": round(s["params"] / 1e3, 1),
                "semantic_branch_params_k": round(groups.get("semantic_branch", 0) / 1e3, 1),
                "gflops": round(s["flops"] / 1e9, 2),
                "forward_median_ms": summarize(samples[name]["forward"]).median,
                "fwd_bwd_median_ms": summarize(samples[name]["step"]).median,
                "saved_for_backward_mb": round(memory[name], 1),
                "threads": 1,
                "load_1min": load,
            }
        )
    base, dec = rows
    for r in rows:
        r["fwd_bwd_vs_tiny"] = round(r["fwd_bwd_median_ms"] / base["fwd_bwd_median_ms"], 2)
    shape = "x".join(str(n) for n in grid_shape)
    table = Table(
        f"Shared vs decoupled encoders (tiny widths, grid {shape}, {num_points} points, CPU, 1 thread)",
        [
            "variant",
            "params_k",
            "semantic_branch_params_k",
            "gflops",
            "forward_median_ms",
            "fwd_bwd_median_ms",
            "fwd_bwd_vs_tiny",
            "saved_for_backward_mb",
            "threads",
            "load_1min",
        ],
        rows,
        [
            f"median of {repeats} runs per variant (round robin) after one warm-up, one process, 1 intra-op thread; "
            "forward: eval mode, training outputs (sem3d, projection), no autograd; fwd_bwd: train mode, "
            "compute_losses on random targets, backward; gflops: model_summary (matrix products and convolutions, "
            "a multiply-add = 2); saved_for_backward_mb: distinct storages autograd keeps for the backward"
        ],
    )
    checks = [
        Check(
            "decoupled encoders add the semantic branch's own networks",
            "tiny_decoupled has more parameters than tiny",
            f"{dec['params_k']} k vs {base['params_k']} k",
            dec["params_k"] > base["params_k"],
        )
    ]
    return Section("variants", [table], checks, info={"rows": rows}, seconds=time.perf_counter() - start)
