"""The SAM generations Med-SA adapts, and where each keeps the blocks that Med-SA wraps.

SAM's ViT blocks are wrapped whole, because SD-Trans (the depth branch) reuses the block's own `qkv`. SAM 2's Hiera
blocks and the SAM 3 tracker's ViT blocks keep their own forward: Med-SA wraps their attention (serial Space
adapter on its output) and their MLP (parallel MLP adapter), so the adapters follow each block's real width through
Hiera's stage changes and query pooling without copying transformers' block code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_STANDARD_MEAN,
    IMAGENET_STANDARD_STD,
)

from .errors import MedSAValueError

DECODER_BLOCKS = r"mask_decoder\.transformer\.layers\.\d+"


@dataclass(frozen=True)
class SamFamily:
    """One SAM generation: its model classes, its image-encoder block list and what Med-SA wraps in each block."""

    name: str
    model_classes: str
    encoder_blocks: str
    # Name of the attention inside a block; None wraps the whole block (SAM, for SD-Trans).
    attention: str | None
    # Whether 5-D volumes run through the image encoder (SD-Trans). SAM 2 models take volumes as videos instead.
    takes_volumes: bool
    # The transformers classes a checkpoint loads as: the image model (training, evaluation, 2-D prediction), the
    # video model (propagation through a volume, None for SAM), and the processor whose preparation the data
    # pipeline repeats (peft_medsa.data.preprocessing).
    image_model: str
    video_model: str | None
    processor: str
    # The processor's frame: SAM resizes the longest side and pads to the square input; SAM 2 and the SAM 3
    # tracker stretch the image to the square. Then both normalise with the family's statistics.
    keeps_aspect_ratio: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def model_class(self, video: bool = False) -> type[nn.Module]:
        """The transformers class of the image model, or of the video model with `video=True`."""
        import transformers

        return getattr(transformers, self.video_model if video else self.image_model)

    def model_types(self) -> dict[str, bool]:
        """The `model_type`s of this family's checkpoint configs -> whether the checkpoint is a video model (one
        whose memory weights propagate a prompt through a volume)."""
        types = {self.model_class().config_class.model_type: False}
        if self.video_model is not None:
            types[self.model_class(video=True).config_class.model_type] = True
        return types

    def target_regex(self, decoder_adapters: bool) -> str:
        """The modules one adapter wraps: every image-encoder block (or its attention and MLP), and the decoder's
        two-way blocks if enabled."""
        blocks = self.encoder_blocks.replace(".", r"\.") + r"\.\d+"
        targets = [blocks if self.attention is None else rf"{blocks}\.({self.attention}|mlp)"]
        if decoder_adapters:
            targets.append(DECODER_BLOCKS)
        return rf"(.*\.)?({'|'.join(targets)})"

    def blocks(self, model: nn.Module) -> nn.ModuleList | None:
        """The image encoder's blocks if `model` has this family's layout, else None."""
        try:
            blocks = model.get_submodule(self.encoder_blocks)
        except AttributeError:
            return None
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            return None
        if self.attention is not None and not all(
            hasattr(block, self.attention) and hasattr(block, "mlp") for block in blocks
        ):
            return None
        return blocks


SAM = SamFamily(
    "SAM",
    "SamModel, SamHQModel",
    "vision_encoder.layers",
    attention=None,
    takes_volumes=True,
    image_model="SamModel",
    video_model=None,
    processor="SamProcessor",
    keeps_aspect_ratio=True,
    image_mean=tuple(IMAGENET_DEFAULT_MEAN),
    image_std=tuple(IMAGENET_DEFAULT_STD),
)
SAM2 = SamFamily(
    "SAM 2",
    "Sam2Model, Sam2VideoModel",
    "vision_encoder.backbone.blocks",
    attention="attn",
    takes_volumes=False,
    image_model="Sam2Model",
    video_model="Sam2VideoModel",
    processor="Sam2Processor",
    keeps_aspect_ratio=False,
    image_mean=tuple(IMAGENET_DEFAULT_MEAN),
    image_std=tuple(IMAGENET_DEFAULT_STD),
)
SAM3_TRACKER = SamFamily(
    "SAM 3 tracker",
    "Sam3TrackerModel, Sam3TrackerVideoModel",
    "vision_encoder.backbone.layers",
    attention="attention",
    takes_volumes=False,
    image_model="Sam3TrackerModel",
    video_model="Sam3TrackerVideoModel",
    processor="Sam3TrackerProcessor",
    keeps_aspect_ratio=False,
    image_mean=tuple(IMAGENET_STANDARD_MEAN),
    image_std=tuple(IMAGENET_STANDARD_STD),
)
FAMILIES = (SAM, SAM2, SAM3_TRACKER)

# Families that look like SAM but cannot take Med-SA's adapters, and why (named in the refusal).
UNSUPPORTED = {
    "EdgeTam": "EdgeTAM's RepViT image encoder (a timm model) is convolutional: it has no attention and MLP "
    "blocks for Med-SA's Space and MLP adapters."
}


def family_of(model: nn.Module) -> SamFamily:
    """The SAM generation of `model` (a PeftModel: of its base model), from its module layout; a clear TypeError
    for anything else."""
    if hasattr(model, "get_base_model"):  # a PeftModel
        model = model.get_base_model()
    decoder = getattr(model, "mask_decoder", None)
    if decoder is not None and hasattr(decoder, "transformer"):
        for family in FAMILIES:
            if family.blocks(model) is not None:
                return family
    name = type(model).__name__
    reason = next((why for prefix, why in UNSUPPORTED.items() if name.startswith(prefix)), None)
    supported = "; ".join(f"{family.name}: {family.model_classes}" for family in FAMILIES)
    raise TypeError(
        f"Med-SA adapts Segment Anything models ({supported}); got {name}, which has "
        + (reason or "none of their image-encoder block layouts and no `mask_decoder.transformer`.")
        + " Load one of those classes with `from_pretrained(...)`."
    )


def family_of_checkpoint(model_type: str | None, where: str) -> SamFamily:
    """The SAM generation of a checkpoint, from its config's `model_type`; a clear MedSAValueError naming `where`
    (the checkpoint) for anything else."""
    for family in FAMILIES:
        if model_type in family.model_types():
            return family
    reason = next(
        (why for prefix, why in UNSUPPORTED.items() if (model_type or "").startswith(prefix.lower())), ""
    )
    supported = ", ".join(t for family in FAMILIES for t in family.model_types())
    raise MedSAValueError(
        f"{where} is a {model_type!r} checkpoint; Med-SA takes checkpoints of type {supported} "
        f"(e.g. facebook/sam-vit-base, facebook/sam2.1-hiera-tiny). {reason}".strip()
    )


def family_of_adapter(keys: list[str]) -> SamFamily | None:
    """The family whose image-encoder layout a saved adapter's tensor names follow (None if no encoder tensor)."""
    for family in FAMILIES:
        if any(f"{family.encoder_blocks}." in key for key in keys):
            return family
    return None
