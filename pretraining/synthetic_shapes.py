"""A procedural promptable-segmentation source domain: textured shapes on textured backgrounds, with prompts.

Every batch is drawn in torch, vectorised over images and objects, from a seeded generator, so pretraining
needs no data files and runs at CPU speed. An image holds up to `MAX_OBJECTS` overlapping shapes (ellipses,
polygons, stars, wobbly blobs, each optionally a ring), painted back to front with their own colour and
texture (smooth noise, stripes) over a background with a gradient and texture; half the images are grey. Then
blur, noise, gamma, contrast and, sometimes, SAM's bottom/right padding. Targets are the *visible* parts of
objects; prompts are in SAM's (x, y) pixel convention in the model's input frame: tight boxes (optionally
jittered) or clicks (positive inside the target, sometimes negatives outside, padded with SAM's "not a point"
label -1).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
MAX_OBJECTS = 5
MIN_TARGET_PIXELS = 16  # in the input frame; smaller visible parts are not used as targets


class SyntheticShapes:
    """Seeded batches `{pixel_values, labels, input_boxes | input_points + input_labels}` for `SamModel`.

    `labels` are (B, P, m, m) in {0, 1} at the mask decoder's resolution m = `mask_size`: P prompts per image
    share one image encoding. `box_jitter` is the corner noise of box prompts as a fraction of the box side.
    """

    def __init__(self, image_size: int = 128, mask_size: int = 32, seed: int = 0, box_jitter: float = 0.05):
        self.size = image_size
        self.mask_size = mask_size
        self.box_jitter = box_jitter
        self.generator = torch.Generator().manual_seed(seed)
        coords = torch.arange(image_size, dtype=torch.float32) + 0.5
        self.y, self.x = torch.meshgrid(coords, coords, indexing="ij")  # pixel centres, (S, S)

    def batch(
        self,
        batch_size: int,
        prompts_per_image: int = 1,
        prompt: Literal["box", "points"] = "box",
        jitter: bool = True,
    ) -> dict[str, torch.Tensor]:
        images, visible = self._scene(batch_size)
        targets = self._pick_targets(visible, prompts_per_image)  # (B, P, S, S) bool
        size = (self.mask_size, self.mask_size)
        labels = (F.adaptive_avg_pool2d(targets.float(), size) >= 0.5).float()
        out = {"pixel_values": images, "labels": labels}
        if prompt == "box":
            out["input_boxes"] = self._boxes(targets, jitter)
        elif prompt == "points":
            out["input_points"], out["input_labels"] = self._points(targets)
        else:
            raise ValueError(f"prompt must be 'box' or 'points', got {prompt!r}")
        return out

    # -- scene ---------------------------------------------------------------------------------------------

    def _uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator) * (high - low) + low

    def _smooth_noise(self, count: int, grid: int) -> torch.Tensor:
        """(count, S, S) zero-mean, unit-scale noise varying on the scale S / grid (bicubic upsampling)."""
        coarse = torch.randn(count, 1, grid, grid, generator=self.generator)
        return F.interpolate(coarse, size=(self.size, self.size), mode="bicubic", align_corners=False)[:, 0]

    def _texture(self, count: int) -> torch.Tensor:
        """(count, S, S) textures: smooth noise at a random scale plus oriented stripes, random amplitudes."""
        grid = int(self._uniform(1, low=3, high=33).item())
        angle, frequency, phase = (self._uniform(count, 1, 1, high=h) for h in (math.pi, 0.6, 2 * math.pi))
        stripes = torch.sin((self.x * angle.cos() + self.y * angle.sin()) * frequency + phase)
        amplitude = self._uniform(count, 2, 1, 1) ** 2 * (self._uniform(count, 2, 1, 1) < 0.6)
        return amplitude[:, 0] * 0.25 * self._smooth_noise(count, grid) + amplitude[:, 1] * 0.15 * stripes

    def _shapes(self, batch: int) -> torch.Tensor:
        """(B, K, S, S) bool object masks: star-shaped regions ρ < R(angle) of random type, size and pose.

        The ratio ρ / R is computed at half resolution and upsampled bilinearly: 4x cheaper, smooth edges.
        """
        k, s, half = MAX_OBJECTS, self.size, self.size // 2
        grid = (torch.arange(half, dtype=torch.float32) + 0.5) * (s / half)
        y, x = torch.meshgrid(grid, grid, indexing="ij")
        centre = self._uniform(batch, k, 2, 1, 1, low=0.1 * s, high=0.9 * s)
        radius = s * torch.exp(self._uniform(batch, k, 1, 1, low=math.log(0.03), high=math.log(0.4)))
        aspect = self._uniform(batch, k, 1, 1, low=0.35, high=1.0)
        rotation = self._uniform(batch, k, 1, 1, high=2 * math.pi)
        dx, dy = x - centre[:, :, 0], y - centre[:, :, 1]
        u = (dx * rotation.cos() + dy * rotation.sin()) / radius
        v = (-dx * rotation.sin() + dy * rotation.cos()) / (radius * aspect)
        rho, angle = torch.sqrt(u**2 + v**2), torch.atan2(v, u)

        sides = torch.randint(3, 9, (batch, k, 1, 1), generator=self.generator).float()
        sector = 2 * math.pi / sides
        polygon = torch.cos(math.pi / sides) / torch.cos(torch.remainder(angle, sector) - sector / 2)
        triangle = (torch.remainder(angle / sector, 1.0) - 0.5).abs() * 2  # 0 at the star's tips, 1 between
        star = 1 - self._uniform(batch, k, 1, 1, low=0.3, high=0.6) * triangle
        wobble = sum(
            self._uniform(batch, k, 1, 1, high=0.25 / n)
            * torch.cos(n * angle + self._uniform(batch, k, 1, 1, high=6.3))
            for n in range(2, 6)
        )
        kind = torch.randint(0, 4, (batch, k, 1, 1), generator=self.generator)  # ellipse, polygon, star, blob
        boundary = torch.where(kind == 1, polygon, torch.where(kind == 2, star, torch.ones_like(rho)))
        boundary = boundary * (1 + torch.where(kind == 3, 2.0, 0.3) * wobble)
        ratio = F.interpolate(rho / boundary, size=(s, s), mode="bilinear", align_corners=False)
        ring = self._uniform(batch, k, 1, 1) < 0.15
        inner = self._uniform(batch, k, 1, 1, low=0.4, high=0.8)
        return (ratio < 1) & ~(ring & (ratio < inner))

    def _scene(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (B, 3, S, S) and the visible part of each object (B, K, S, S)."""
        k, s = MAX_OBJECTS, self.size
        shapes = self._shapes(batch)
        count = torch.randint(1, k + 1, (batch, 1), generator=self.generator)
        shapes &= (torch.arange(k) < count).view(batch, k, 1, 1)
        # Layers back to front: each pixel shows the last object covering it, or the background (layer 0).
        layer_index = torch.arange(1, k + 1).view(1, k, 1, 1)
        owner = (shapes * layer_index).amax(1)  # (B, S, S)
        visible = owner[:, None] == layer_index

        grey = self._uniform(batch, 1, 1) < 0.5
        colours = self._uniform(batch, k + 1, 3)  # background + objects
        colours = torch.where(grey, colours.mean(2, keepdim=True).expand_as(colours), colours)
        dark = self._uniform(batch, 1) < 0.3  # a dark frame around the objects, as in many scans
        colours[:, 0] = torch.where(dark, colours[:, 0] * 0.15, colours[:, 0])
        textures = self._texture(batch * (k + 1)).view(batch, k + 1, s, s)
        gradient_angle = self._uniform(batch, 1, 1, high=2 * math.pi)
        gradient = (self.x * gradient_angle.cos() + self.y * gradient_angle.sin()) / s - 0.5
        textures[:, 0] += self._uniform(batch, 1, 1, low=-0.4, high=0.4) * gradient
        texture = torch.gather(textures, 1, owner[:, None]).squeeze(1)  # (B, S, S)
        colour = torch.gather(colours, 1, owner.view(batch, -1, 1).expand(-1, -1, 3))  # (B, S*S, 3)
        images = colour.transpose(1, 2).reshape(batch, 3, s, s) + texture[:, None]

        images = self._degrade(images)
        images = (images - IMAGENET_MEAN) / IMAGENET_STD
        content = self._content(batch)  # SAM pads the bottom/right of non-square images with zeros
        return images * content[:, None], visible & content[:, None]

    def _degrade(self, images: torch.Tensor) -> torch.Tensor:
        """Blur, additive noise, gamma and contrast, each of random strength per image; returns [0, 1]."""
        batch = images.shape[0]
        sigma = float(self._uniform(1, low=0.5, high=2.0))
        taps = torch.arange(-3, 4, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = (kernel / kernel.sum()).tolist()
        s = self.size  # separable Gaussian as a sum of shifted copies: much faster than conv2d on CPU here
        padded = F.pad(images, (3, 3, 0, 0), mode="replicate")
        blurred = sum(w * padded[..., :, i : i + s] for i, w in enumerate(kernel))
        padded = F.pad(blurred, (0, 0, 3, 3), mode="replicate")
        blurred = sum(w * padded[..., i : i + s, :] for i, w in enumerate(kernel))
        mix = self._uniform(batch, 1, 1, 1)
        images = mix * blurred + (1 - mix) * images
        noise = self._uniform(batch, 1, 1, 1, high=0.1) ** 1.5 * 3
        images = images + noise * torch.randn(images.shape, generator=self.generator)
        images = images.clamp(0, 1) ** torch.exp(self._uniform(batch, 1, 1, 1, low=-0.5, high=0.5))
        contrast = self._uniform(batch, 1, 1, 1, low=0.5, high=1.3)
        brightness = self._uniform(batch, 1, 1, 1, low=-0.1, high=0.1)
        return ((images - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)

    def _content(self, batch: int) -> torch.Tensor:
        """(B, S, S) bool: the resized image inside SAM's padded square (a third of images are not square)."""
        s = self.size
        padded = self._uniform(batch) < 1 / 3
        short_side = self._uniform(batch, low=0.5 * s, high=s).round()
        extent = torch.where(padded, short_side, torch.full((batch,), s)).view(batch, 1, 1)
        tall = (self._uniform(batch) < 0.5).view(batch, 1, 1)
        return torch.where(tall, self.x < extent, self.y < extent)

    # -- targets and prompts -------------------------------------------------------------------------------

    def _pick_targets(self, visible: torch.Tensor, count: int) -> torch.Tensor:
        """(B, P, S, S): P visible objects per image (with repeats), large enough to be prompted."""
        area = visible.sum((-2, -1)).float()
        usable = (area >= MIN_TARGET_PIXELS).float()
        # No usable object: the largest, even if tiny.
        weights = torch.where(usable.sum(1, keepdim=True) > 0, usable, area + 1e-6)
        index = torch.multinomial(weights, count, replacement=True, generator=self.generator)  # (B, P)
        return torch.gather(visible, 1, index[..., None, None].expand(-1, -1, self.size, self.size))

    def _boxes(self, targets: torch.Tensor, jitter: bool) -> torch.Tensor:
        """(B, P, 4) tight boxes [x0, y0, x1, y1] (inclusive pixel indices); with `jitter`, half perturbed."""
        s = self.size
        index = torch.arange(s)
        columns, rows = targets.any(-2), targets.any(-1)  # (B, P, S)
        x0 = torch.where(columns, index, s).amin(-1)
        x1 = torch.where(columns, index, -1).amax(-1)
        y0 = torch.where(rows, index, s).amin(-1)
        y1 = torch.where(rows, index, -1).amax(-1)
        boxes = torch.stack([x0, y0, x1, y1], -1).float()
        empty = x1 < 0
        boxes[empty] = torch.tensor([0.0, 0.0, s - 1.0, s - 1.0])
        if jitter:
            extent = torch.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], -1) + 1
            noisy = self._uniform(*boxes.shape[:2], 1) < 0.5
            noise = torch.randn(boxes.shape, generator=self.generator)
            boxes = boxes + noisy * self.box_jitter * extent.repeat(1, 1, 2) * noise
        return boxes.clamp(0, s - 1).round()

    def _points(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, N, 2) clicks and (B, P, N) labels: 1-3 positives, 0-2 negatives (some padded with -1)."""
        batch, count = targets.shape[:2]
        positives = int(torch.randint(1, 4, (1,), generator=self.generator))
        negatives = int(torch.randint(0, 3, (1,), generator=self.generator))
        flat = targets.flatten(2).float().view(batch * count, -1)
        inside = torch.multinomial(flat + 1e-6, positives, replacement=True, generator=self.generator)
        labels = [torch.ones(batch * count, positives)]
        picks = [inside]
        if negatives:
            picks.append(
                torch.multinomial(1 - flat + 1e-6, negatives, replacement=True, generator=self.generator)
            )
            keep = self._uniform(batch * count, negatives) < 0.5
            labels.append(torch.where(keep, 0.0, -1.0))
        index = torch.cat(picks, 1)
        points = torch.stack([index % self.size, index // self.size], -1).float()  # (x, y) = (column, row)
        labels = torch.cat(labels, 1)
        points[labels < 0] = 0.0
        return points.view(batch, count, -1, 2), labels.view(batch, count, -1).long()
