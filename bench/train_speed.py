"""Training throughput per architecture on this machine: steps/s and voxels/s of one optimiser step.

    vbmd-rt bench --train [--threads 2]

Each architecture gets random inputs of the size its recipe trains on (forward, Dice + BCE loss, backward,
AdamW step), a warm-up step, then the median of ``steps`` timed steps. The one-bone segmenter trains on
2D windows (24 x 6 x 160 x 160), the paper's 3D U-Net on a 32 x 128 x 128 window, the 2D ResNet34 U-Net
on 512 x 512 slices: the numbers say why the bundled model's recipe runs on 2 CPU cores.
"""

from __future__ import annotations

import time

import numpy as np

SHAPES = {
    "bonewin2d": (24, 6, 160, 160),  # the recipe's batch (export.bonewin.Recipe.batch)
    "unet3d": (1, 1, 32, 128, 128),
    "unet2d": (4, 1, 512, 512),
}


def measure(arch: str, steps: int = 3, threads: int = 2) -> dict:
    import torch

    from vbmd_rt.export import nets
    from vbmd_rt.export.bonewin import dice_bce

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = nets.build(arch)
    shape = SHAPES[arch]
    x = torch.randn(*shape)
    if len(shape) == 4:
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    target = (torch.rand(shape[0], 1, *shape[2:]) > 0.5).float()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = dice_bce(net(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    s = float(np.median(times))
    voxels = int(np.prod(shape[:1] + shape[2:]))
    return {
        "input": list(shape),
        "parameters": nets.count_parameters(net),
        "seconds_per_step": round(s, 3),
        "steps_per_s": round(1 / s, 3),
        "output_voxels_per_s": round(voxels / s),
    }


def run(archs=("bonewin2d", "unet3d", "unet2d"), steps: int = 3, threads: int = 2, log=print) -> dict:
    out = {}
    log(f"{'architecture':<12} {'input':<22} {'params':>10} {'s/step':>8} {'steps/s':>8} {'voxels/s':>12}")
    for arch in archs:
        r = measure(arch, steps, threads)
        out[arch] = r
        log(
            f"{arch:<12} {'x'.join(map(str, r['input'])):<22} {r['parameters']:>10,} {r['seconds_per_step']:>8.2f}"
            f" {r['steps_per_s']:>8.2f} {r['output_voxels_per_s']:>12,}"
        )
    return out
