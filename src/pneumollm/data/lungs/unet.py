"""``lungs=unet``: a small pretrained lung/heart/clavicle U-Net (the CheXmask authors' HybridGNet baseline).

The module layout matches the state dict described in ``../shared/data/hybridgnet-unet/README.md``:
pre-activation residual blocks, BatchNorm that always normalises with the current input's statistics,
bilinear upsampling with aligned corners, four output classes (class 1 = lungs), input 512x512 in [0, 1].
The weights are never part of the project: the user passes their path (``lungs.weights=/path/unet.pt``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize
from torch import nn

from pneumollm.data.lungs.components import dilate_disk, fill_holes, lung_pair, open_disk
from pneumollm.errors import WeightsNotFoundError

UNET_CLASSES = ("background", "lungs", "heart", "clavicles")
LUNG_CLASS = 1
COMPETING_CLASSES = (0, 2)  # background and heart


def _norm(channels: int) -> nn.BatchNorm2d:
    # No running statistics: the pretrained model always normalises with the current input's statistics.
    return nn.BatchNorm2d(channels, track_running_stats=False)


class PreActResidualBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut (1x1 conv + BN when the width changes); ReLU after."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _norm(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip: nn.Module = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), _norm(out_channels))
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.block(x) + self.skip(x))


class LungUNet(nn.Module):
    """Four-level residual U-Net, widths 8-16-32-64, 1 input channel, 4 output logits per pixel."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64), n_classes: int = len(UNET_CLASSES)) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        self.dconv_down1 = PreActResidualBlock(1, w1)
        self.dconv_down2 = PreActResidualBlock(w1, w2)
        self.dconv_down3 = PreActResidualBlock(w2, w3)
        self.dconv_down4 = PreActResidualBlock(w3, w4)
        self.bottleneck = PreActResidualBlock(w4, w4)
        self.dconv_up4 = PreActResidualBlock(w4 + w4, w4)
        self.dconv_up3 = PreActResidualBlock(w4 + w3, w3)
        self.dconv_up2 = PreActResidualBlock(w3 + w2, w2)
        self.dconv_up1 = PreActResidualBlock(w2 + w1, w1)
        self.conv_last = nn.Conv2d(w1, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 4, H, W) for images (N, 1, H, W) in [0, 1]; H and W must be multiples of 16."""
        skips = []
        for down in (self.dconv_down1, self.dconv_down2, self.dconv_down3, self.dconv_down4):
            x = down(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, skip in zip((self.dconv_up4, self.dconv_up3, self.dconv_up2, self.dconv_up1), reversed(skips)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = up(torch.cat([x, skip], dim=1))
        return self.conv_last(x)


def load_unet_weights(path: str | Path | None) -> LungUNet:
    """A :class:`LungUNet` with the state dict at ``path`` loaded strictly; clear errors for a bad path/file."""
    if path is None or str(path).strip() == "":
        raise WeightsNotFoundError(
            "lungs=unet needs the pretrained U-Net state dict: pass lungs.weights=/path/to/unet.pt"
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"U-Net weights file {path} does not exist (lungs.weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors come in many types
        raise ValueError(f"U-Net weights file {path} is not a readable PyTorch state dict: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"U-Net weights file {path} holds a {type(state).__name__}, not a state dict")
    model = LungUNet()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"U-Net weights file {path} does not match the expected lung U-Net layout "
            f"(HybridGNet baseline, widths 8-16-32-64, 4 classes): {err}"
        ) from err
    return model.eval()


class UNetSegmenter:
    """Lung mask of a film from the pretrained U-Net: film -> 512x512 -> lung logit wins -> film size.

    A pixel is lung when its lung logit beats the background and heart logits. The clavicle class is
    left out of that contest: the training labels paint the clavicles over the lung apices, and a plain
    argmax loses the apices. The network also marks dark neck and shoulder areas as lung now and then,
    joined to the apices by narrow bridges, and gas below the diaphragm: an opening of radius
    ``opening`` (a fraction of the network input) cuts the bridges, the largest region on each side of
    the film is kept, and the kept lungs get back the detail the opening removed.

    The film is padded to a centred square (keeping its aspect ratio, as the network saw square films)
    unless ``pad_to_square`` is false. Films are run one at a time on purpose: the network's BatchNorm
    uses the statistics of its input, so batching films together would change each film's result.
    """

    name = "unet"

    def __init__(
        self,
        weights: str | Path | None,
        device: str = "cpu",
        input_size: int = 512,
        pad_to_square: bool = True,
        opening: float = 0.016,
        side_margin: float = 0.1,
    ) -> None:
        if input_size % 16:
            raise ValueError(f"lungs.input_size must be a multiple of 16, got {input_size}")
        self.model = load_unet_weights(weights).to(device)
        self.device = device
        self.input_size = input_size
        self.pad_to_square = pad_to_square
        self.opening = opening
        self.side_margin = side_margin
        self.last_failure = ""

    def _pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) padding that centres the film in a square (zeros if not padding)."""
        if not self.pad_to_square:
            return 0, 0, 0, 0
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        return top, left, side - height - top, side - width - left

    @torch.no_grad()
    def network_margin(self, image: np.ndarray) -> torch.Tensor:
        """Lung margin (lung logit minus the background/heart logits; > 0 is lung), (1, 1, S, S) at the
        network's input size over the padded film."""
        top, left, bottom, right = self._pads(*image.shape[:2])
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0)[None, None]
        x = F.pad(x, (left, right, top, bottom))
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                          antialias=True)
        logits = self.model(x.to(self.device)).float().cpu()
        others = logits[:, list(COMPETING_CLASSES)].amax(dim=1, keepdim=True)
        return logits[:, LUNG_CLASS : LUNG_CLASS + 1] - others

    def lung_scores(self, image: np.ndarray) -> np.ndarray:
        """The lung margin at the film's size (> 0 is lung), before any clean-up."""
        height, width = image.shape[:2]
        top, left, bottom, right = self._pads(height, width)
        margin = F.interpolate(self.network_margin(image), size=(top + height + bottom, left + width + right),
                               mode="bilinear", align_corners=False)
        return margin[0, 0, top : top + height, left : left + width].numpy()

    def clean(self, mask: np.ndarray) -> np.ndarray:
        """Cut narrow bridges, keep one lung per side, restore the kept lungs' detail, fill holes."""
        radius = self.opening * self.input_size
        if radius > 0:
            kept = lung_pair(open_disk(mask, radius), self.side_margin)
            mask = mask & dilate_disk(kept, radius)
        return fill_holes(lung_pair(mask, self.side_margin))

    def __call__(self, image: np.ndarray, image_id: str) -> np.ndarray | None:
        if image.ndim != 2:
            raise ValueError(f"{image_id}: lungs=unet expects a 2-D greyscale film, got shape {image.shape}")
        height, width = image.shape
        top, left, bottom, right = self._pads(height, width)
        margin = self.network_margin(image)[0, 0].numpy()
        # the film's own area at the network's scale (the padding is cut off)
        row_scale = margin.shape[0] / (top + height + bottom)
        col_scale = margin.shape[1] / (left + width + right)
        margin = margin[round(top * row_scale) : round((top + height) * row_scale),
                        round(left * col_scale) : round((left + width) * col_scale)]
        if not (margin > 0).any():
            self.last_failure = "the U-Net found no lung pixels"
            return None
        lungs = self.clean(margin > 0)
        if not lungs.any():
            self.last_failure = "the U-Net found lung pixels only at the film's outer edges"
            return None
        self.last_failure = ""
        # bilinear resize of the 0/1 mask, cut at 0.5: smooth outlines on films larger than the network input
        return resize(lungs.astype(np.float32), (height, width), order=1, anti_aliasing=False) > 0.5
