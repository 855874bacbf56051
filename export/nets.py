"""The two networks of the paper, in plain torch (no torchvision, timm or segmentation-models-pytorch).

``UNet2D``: a ResNet34 encoder (stem, then 3, 4, 6, 3 basic blocks at 64, 64, 128, 256, 512 channels)
under a U-Net decoder (256, 128, 64, 32, 16), batch norm, ReLU; one input channel, one output logit.
With the default widths it has the 24.4 M parameters of segmentation-models-pytorch's ``Unet("resnet34")``
and can start from an ImageNet ResNet34 state dict that the user supplies (``load_resnet34``).

``UNet3D``: the Isensee-style 3D U-Net of the paper: five levels (2, 4, 8, 16, 32 channels), residual
context modules with instance norm and LeakyReLU, dropout 0.6 in the first stage, nearest x2 upsampling
followed by a 3x3x3 convolution, localisation modules, and deep-supervision heads summed into the output.
Input (N, 1, Z, Y, X) with every axis divisible by 16.

Both return logits; the sigmoid belongs to the exported graph (``export.onnx_export``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET34_WIDTHS = (64, 64, 128, 256, 512)
DECODER_WIDTHS = (256, 128, 64, 32, 16)
UNET3D_WIDTHS = (2, 4, 8, 16, 32)


# --------------------------------------------------------------------------- 2D: ResNet34 U-Net


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm, identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + identity)


class ResNetEncoder(nn.Module):
    """ResNet stem + four stages; returns the features at strides 2, 4, 8, 16 and 32.

    Attribute names follow torchvision's ResNet so that its state dicts load directly.
    """

    def __init__(self, blocks=RESNET34_BLOCKS, widths=RESNET34_WIDTHS, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths[1:], strict=True)):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(*[BasicBlock(cin if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)])
            setattr(self, f"layer{i + 1}", layer)
            cin = w
        self.widths = tuple(widths)

    def forward(self, x):
        s2 = F.relu(self.bn1(self.conv1(x)))
        s4 = self.layer1(self.maxpool(s2))
        s8 = self.layer2(s4)
        s16 = self.layer3(s8)
        s32 = self.layer4(s16)
        return [s2, s4, s8, s16, s32]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock2D(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + cskip, cout)
        self.conv2 = _conv_bn_relu(cout, cout)

    def forward(self, x, skip=None):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNet2D(nn.Module):
    """ResNet34-encoder U-Net for single 512 x 512 slices (any size divisible by 32)."""

    def __init__(self, blocks=RESNET34_BLOCKS, widths=RESNET34_WIDTHS, decoder=DECODER_WIDTHS, in_channels: int = 1):
        super().__init__()
        self.encoder = ResNetEncoder(blocks, widths, in_channels)
        skips = [widths[3], widths[2], widths[1], widths[0], 0]  # s16, s8, s4, s2, none
        cin = widths[4]
        self.decoder = nn.ModuleList()
        for cs, cout in zip(skips, decoder, strict=True):
            self.decoder.append(DecoderBlock2D(cin, cs, cout))
            cin = cout
        self.head = nn.Conv2d(cin, 1, 3, 1, 1)
        self.config = {"blocks": list(blocks), "widths": list(widths), "decoder": list(decoder)}

    def forward(self, x):
        s2, s4, s8, s16, s32 = self.encoder(x)
        y = s32
        for block, skip in zip(self.decoder, [s16, s8, s4, s2, None], strict=True):
            y = block(y, skip)
        return self.head(y)


def load_resnet34(model: UNet2D, state_dict_path: str | Path) -> list[str]:
    """Initialise the encoder from an ImageNet ResNet34 state dict file supplied by the user.

    The first conv's RGB kernels are summed into the single grey channel; the classifier (``fc``) is
    dropped. Returns the encoder keys that were not in the file (empty for a torchvision ResNet34).
    Nothing is downloaded.
    """
    state = torch.load(str(state_dict_path), map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = state.get("conv1.weight")
    if w is not None and w.shape[1] == 3 and model.encoder.conv1.in_channels == 1:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True)
    own = model.encoder.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{state_dict_path}: not a ResNet34 state dict (shape mismatch at {bad[0]})")
    missing, _ = model.encoder.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return list(missing)


# --------------------------------------------------------------------------- 3D: Isensee-style U-Net


class InstanceNorm3dStable(nn.Module):
    """Instance norm (affine) with the mean taken axis by axis (x, then y, then z).

    The same function and state dict as ``nn.InstanceNorm3d(c, affine=True)``, but exported as nested
    ReduceMean nodes: ONNX Runtime's single-pass InstanceNormalization and ReduceMean lose about 2e-3
    over a 80 x 256 x 448 volume in float32 (measured), the nested means lose nothing measurable.
    """

    def __init__(self, c: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    @staticmethod
    def _mean(x):
        return x.mean(4, keepdim=True).mean(3, keepdim=True).mean(2, keepdim=True)

    def forward(self, x):
        d = x - self._mean(x)
        var = self._mean(d * d)
        return d * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


def _norm_act3d(c: int) -> list[nn.Module]:
    return [InstanceNorm3dStable(c), nn.LeakyReLU(0.01, inplace=True)]


class Context3D(nn.Module):
    """Residual context module: (norm, act, conv) - dropout - (norm, act, conv), added to the input."""

    def __init__(self, c: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            *_norm_act3d(c),
            nn.Conv3d(c, c, 3, 1, 1),
            nn.Dropout3d(dropout) if dropout > 0 else nn.Identity(),
            *_norm_act3d(c),
            nn.Conv3d(c, c, 3, 1, 1),
        )

    def forward(self, x):
        return x + self.body(x)


class Up3D(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3x3 convolution, norm and activation."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv3d(cin, cout, 3, 1, 1), *_norm_act3d(cout))

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet3D(nn.Module):
    """Five-level 3D U-Net with deep supervision, for (N, 1, Z, Y, X) volumes, axes divisible by 16."""

    def __init__(self, widths=UNET3D_WIDTHS, dropout: float = 0.6, in_channels: int = 1):
        super().__init__()
        w = list(widths)
        self.stems = nn.ModuleList()
        self.contexts = nn.ModuleList()
        cin = in_channels
        for i, c in enumerate(w):
            self.stems.append(nn.Conv3d(cin, c, 3, 1 if i == 0 else 2, 1))
            self.contexts.append(Context3D(c, dropout if i == 0 else 0.0))
            cin = c
        self.ups = nn.ModuleList()
        self.locals = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in range(len(w) - 1, 0, -1):  # decoder from the bottom up: w[i] -> w[i-1]
            self.ups.append(Up3D(w[i], w[i - 1]))
            c = w[i - 1]
            if i > 1:  # localisation: 3x3x3 on the concatenation, then 1x1x1 halving the channels
                self.locals.append(
                    nn.Sequential(nn.Conv3d(2 * c, c, 3, 1, 1), *_norm_act3d(c), nn.Conv3d(c, c, 1), *_norm_act3d(c))
                )
            else:  # top level: a 3x3x3 conv keeping 2c channels, as Isensee et al.
                self.locals.append(nn.Sequential(nn.Conv3d(2 * c, 2 * c, 3, 1, 1), *_norm_act3d(2 * c)))
        # Deep-supervision heads on the last three decoder levels (strides 4, 2 and 1), or on all of them where a
        # shallower net has fewer: every head is used (an unused one would be missing from the ONNX).
        n = min(3, len(w) - 1)
        self.heads = nn.ModuleList([nn.Conv3d(c, 1, 1) for c in [*w[n - 1 : 0 : -1], 2 * w[0]]])
        self.config = {"widths": w, "dropout": dropout}

    def forward(self, x):
        skips = []
        for stem, ctx in zip(self.stems, self.contexts, strict=True):
            x = ctx(stem(x))
            skips.append(x)
        y = skips[-1]
        seg = None
        levels = len(skips)
        for k, (up, loc) in enumerate(zip(self.ups, self.locals, strict=True)):
            y = loc(torch.cat([up(y), skips[levels - 2 - k]], dim=1))
            h = k - (levels - 1 - len(self.heads))  # index into heads for the last decoder levels
            if h >= 0:
                s = self.heads[h](y)
                seg = s if seg is None else s + F.interpolate(seg, scale_factor=2.0, mode="nearest")
        return seg


# --------------------------------------------------------------------------- construction


def build(arch: str, config: dict | None = None) -> nn.Module:
    """Build a network from the model card's ``architecture`` and ``config``."""
    config = dict(config or {})
    if arch == "bonewin2d":
        from vbmd_rt.export.bonewin import BoneWinNet

        net = BoneWinNet(**(config or {}))
        net.config = {"widths": list(net.widths)}
        return net
    if arch == "unet2d":
        return UNet2D(**{k: tuple(v) for k, v in config.items() if k in ("blocks", "widths", "decoder")})
    if arch == "unet3d":
        return UNet3D(widths=tuple(config.get("widths", UNET3D_WIDTHS)), dropout=float(config.get("dropout", 0.6)))
    raise ValueError(f"unknown architecture {arch!r} (unet2d or unet3d)")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
