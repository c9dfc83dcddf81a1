"""The SAM generations Med-SA adapts, and where each keeps the blocks that Med-SA wraps.

SAM's ViT blocks are wrapped whole, because SD-Trans (the depth branch) reuses the block's own `qkv`. SAM 2's Hiera
blocks and the SAM 3 tracker's ViT blocks keep their own forward: Med-SA wraps their attention (serial Space
adapter on its output) and their MLP (parallel MLP adapter), so the adapters follow each block's real width through
Hiera's stage changes and query pooling without copying transformers' block code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

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


SAM = SamFamily("SAM", "SamModel, SamHQModel", "vision_encoder.layers", attention=None, takes_volumes=True)
SAM2 = SamFamily(
    "SAM 2",
    "Sam2Model, Sam2VideoModel",
    "vision_encoder.backbone.blocks",
    attention="attn",
    takes_volumes=False,
)
SAM3_TRACKER = SamFamily(
    "SAM 3 tracker",
    "Sam3TrackerModel, Sam3TrackerVideoModel",
    "vision_encoder.backbone.layers",
    attention="attention",
    takes_volumes=False,
)
FAMILIES = (SAM, SAM2, SAM3_TRACKER)

# Families that look like SAM but cannot take Med-SA's adapters, and why (named in the refusal).
UNSUPPORTED = {
    "EdgeTam": "EdgeTAM's RepViT image encoder (a timm model) is convolutional: it has no attention and MLP "
    "blocks for Med-SA's Space and MLP adapters."
}


def family_of(model: nn.Module) -> SamFamily:
    """The SAM generation of `model`, from its module layout; a clear TypeError for anything else."""
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


def family_of_adapter(keys: list[str]) -> SamFamily | None:
    """The family whose image-encoder layout a saved adapter's tensor names follow (None if no encoder tensor)."""
    for family in FAMILIES:
        if any(f"{family.encoder_blocks}." in key for key in keys):
            return family
    return None
