"""`MedSAModel`, the peft tuner: which SAM blocks Med-SA wraps, and how a 5-D volume enters and leaves SamModel.

A volume batch `pixel_values` of shape (B, C, D, H, W) runs as B*D slices, volume-major (all D slices of volume 0,
then volume 1, ...). Prompts and outputs are per slice: `input_points` (B*D, P, N, 2) — or (B, D, P, N, 2), which
keeps one batch dimension for data loaders that split batches — and `pred_masks` (B*D, P, M, h, w). Hooks on the SamModel and on its vision encoder flatten the volume and tell the encoder's
wrappers D (see `SliceContext`), so `model(...)` and `model.get_image_embeddings(...)` both accept volumes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from peft.tuners.tuners_utils import BaseTuner, check_target_module_exists
from torch import nn

from .adapter_files import check_adapter_keys, check_adapter_shapes
from .config import MedSAConfig
from .errors import MedSAValueError
from .families import SamFamily, family_of, family_of_adapter
from .layer import (
    _NOT_MERGEABLE,
    MedSAAttentionLayer,
    MedSADecoderLayer,
    MedSALayer,
    MedSAMLPLayer,
    MedSAVisionLayer,
    SliceContext,
)

# Prompt inputs of SamModel.forward and the rank each must have; their first dimension is the image batch.
PROMPT_RANKS = {"input_points": 4, "input_labels": 3, "input_boxes": 3, "input_masks": 4}


class MedSAModel(BaseTuner):
    """Adds Med-SA adapters to a SAM, SAM 2 or SAM 3 tracker model (use through `peft.get_peft_model`).

    Supported: `SamModel`, `SamHQModel`, `Sam2Model`, `Sam2VideoModel`, `Sam3TrackerModel`,
    `Sam3TrackerVideoModel` (see `peft_medsa.families`).

    Example:
        ```py
        >>> import peft_medsa
        >>> from peft import get_peft_model
        >>> from transformers import SamModel
        >>> model = get_peft_model(SamModel.from_pretrained("facebook/sam-vit-base"), peft_medsa.MedSAConfig())
        >>> model.print_trainable_parameters()
        ```
    """

    prefix: str = "medsa_"
    tuner_layer_cls = MedSALayer
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}

    def __init__(self, model: nn.Module, config: Any, adapter_name: str, **kwargs: Any) -> None:
        self.slice_context = SliceContext()
        self.family: SamFamily = family_of(model)
        super().__init__(model, config, adapter_name, **kwargs)
        # transformers 5.24 leaves `supports_gradient_checkpointing` False on SAM 2 / SAM 3 tracker models, although
        # their encoder blocks are GradientCheckpointingLayers; training Med-SA on them needs it as on SamModel.
        self.model.supports_gradient_checkpointing = True
        self._volume_hooks = []
        if self.family.takes_volumes:
            self._volume_hooks = [
                self.model.register_forward_pre_hook(
                    self._flatten_volume_and_check_prompts, with_kwargs=True
                ),
                self.model.register_forward_hook(self._reset_num_slices, always_call=True),
                self.model.vision_encoder.register_forward_pre_hook(self._flatten_volume, with_kwargs=True),
                self.model.vision_encoder.register_forward_hook(self._reset_num_slices, always_call=True),
            ]

    # Injection -------------------------------------------------------------------------------------------------

    def _prepare_model(self, peft_config: MedSAConfig, model: nn.Module) -> None:
        """Check the config against this model's family and point it at the family's blocks (every injection)."""
        encoder_blocks = self.family.blocks(model)
        missing = sorted(set(peft_config.layers_to_transform or []) - set(range(len(encoder_blocks))))
        if missing:
            raise MedSAValueError(
                f"layers_to_transform={peft_config.layers_to_transform} names blocks {missing}, but this image "
                f"encoder has {len(encoder_blocks)} blocks (0..{len(encoder_blocks) - 1})."
            )
        if peft_config.depth_attention and not self.family.takes_volumes:
            raise MedSAValueError(
                f"depth_attention=True (SD-Trans) needs SAM's ViT blocks; {type(model).__name__} is a "
                f"{self.family.name} model, which takes a volume as a video through its memory "
                "(peft_medsa.video.propagate). Set depth_attention=False."
            )
        peft_config.target_modules = self.family.target_regex(peft_config.decoder_adapters)

    @staticmethod
    def _check_target_module_exists(config: MedSAConfig, key: str) -> bool:
        if not check_target_module_exists(config, key):
            return False
        if config.layers_to_transform is not None and "vision_encoder." in key:
            return _block_index(key) in config.layers_to_transform
        return True

    def _create_and_replace(
        self,
        peft_config: MedSAConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        if isinstance(target, MedSALayer):
            target.update_layer(adapter_name, peft_config)
            return
        if "vision_encoder." in current_key and self.family.attention is None:
            new_module = MedSAVisionLayer(target, adapter_name, peft_config, self.slice_context)
        elif "vision_encoder." in current_key:
            wrapper = MedSAMLPLayer if target_name == "mlp" else MedSAAttentionLayer
            # The block's width after attention: its output width, also at a Hiera stage change.
            new_module = wrapper(target, adapter_name, peft_config, parent.layer_norm2.normalized_shape[0])
        else:
            new_module = MedSADecoderLayer(target, adapter_name, peft_config, _num_output_tokens(self.model))
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(
        self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module
    ) -> None:
        # peft's default copies `child.weight`; a whole transformer block has none. Adapters are already on the
        # base block's device (see `MedSALayer._finish_update`).
        setattr(parent, child_name, new_module)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: MedSAConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        state_dict = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        _check_adapter_family(model, state_dict)
        check_adapter_keys(model, adapter_name, state_dict)
        check_adapter_shapes(model, state_dict)
        return state_dict

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter, but never the last one: peft would leave a model whose forward fails with
        `KeyError: 'default'`. The bare SamModel is what `unload()` returns."""
        if set(self.peft_config) == {adapter_name}:
            raise MedSAValueError(
                f"{adapter_name!r} is the only adapter of this Med-SA model, and a PeftModel without an adapter "
                "cannot run. Use `model.unload()` for the bare SamModel, or add another adapter first."
            )
        super().delete_adapter(adapter_name)

    # Merging and unloading -------------------------------------------------------------------------------------

    def _check_merge_allowed(self) -> None:
        raise MedSAValueError(_NOT_MERGEABLE)

    def _unload_and_optionally_merge(self, merge: bool = True, **kwargs: Any) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        for hook in self._volume_hooks:
            hook.remove()
        return super()._unload_and_optionally_merge(merge=False, **kwargs)

    # Volumes (SD-Trans) and input checks -----------------------------------------------------------------------

    def _flatten_volume(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """(B, C, D, H, W) -> (B*D, C, H, W), volume-major; records D for the encoder blocks.

        Also casts the pixels to the base's dtype (see `_base_dtype`).
        """
        args, kwargs, pixel_values = _pop_pixel_values(args, kwargs)
        if pixel_values is not None and pixel_values.ndim == 5:
            batch, channels, depth, height, width = pixel_values.shape
            pixel_values = pixel_values.transpose(1, 2).reshape(batch * depth, channels, height, width)
            self.slice_context.num_slices = depth
        if pixel_values is not None:
            pixel_values = pixel_values.to(self._base_dtype())
        kwargs["pixel_values"] = pixel_values
        return args, kwargs

    def _flatten_volume_and_check_prompts(
        self, module: nn.Module, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        """SamModel's entry: accept 4-D images or 5-D volumes, and check every prompt against the slice batch."""
        _, _, pixel_values = _pop_pixel_values(args, dict(kwargs))
        image_embeddings = kwargs.get("image_embeddings")
        if pixel_values is not None:
            _check_pixel_values(pixel_values, self.model.config.vision_config)
            args, kwargs = self._flatten_volume(module, args, kwargs)
            batch, what = kwargs["pixel_values"].shape[0], _describe_batch(pixel_values)
        elif image_embeddings is not None:
            _check_image_embeddings(image_embeddings, self.model.config)
            batch, what = image_embeddings.shape[0], f"image_embeddings of batch {image_embeddings.shape[0]}"
        else:
            return args, kwargs
        volume_batch = (
            tuple(pixel_values.shape[:3:2]) if pixel_values is not None and pixel_values.ndim == 5 else None
        )
        for name, rank in PROMPT_RANKS.items():
            prompt = kwargs.get(name)
            if prompt is None:
                continue
            if volume_batch and prompt.ndim == rank + 1 and tuple(prompt.shape[:2]) == volume_batch:
                prompt = kwargs[name] = prompt.flatten(0, 1)  # (B, D, ...) -> (B*D, ...), volume-major
            if prompt.ndim != rank:
                raise MedSAValueError(
                    f"{name} must be a {rank}-D tensor {_PROMPT_SHAPES[name]}, got shape {tuple(prompt.shape)}."
                )
            if prompt.shape[0] != batch:
                raise MedSAValueError(
                    f"{name} has batch {prompt.shape[0]}, but {what} needs {batch}: one prompt set per "
                    "image (for volumes: per slice, as (B*D, ...) volume-major or as (B, D, ...))."
                )
            if prompt.is_floating_point() and _checks_values() and not torch.isfinite(prompt).all():
                raise MedSAValueError(f"{name} holds NaN or infinite values; prompts must be finite.")
        _check_prompt_agreement(kwargs, self.model.config)
        for name in ("image_embeddings", "input_masks"):  # points and boxes: SAM casts them after scaling
            if kwargs.get(name) is not None:
                kwargs[name] = kwargs[name].to(self._base_dtype())
        return args, kwargs

    def _base_dtype(self) -> torch.dtype:
        """The dtype SAM's frozen weights are kept in (float32, or bfloat16 to save memory; adapters stay float32).

        SamModel does not cast its inputs to it (SAM 2 does): the hooks cast float32 pixels (SamProcessor,
        `peft_medsa.data`), image embeddings and mask prompts, so that a bf16 base takes the same inputs as a
        float32 one.
        """
        return self.model.vision_encoder.patch_embed.projection.weight.dtype

    def _reset_num_slices(self, *args: Any) -> None:
        self.slice_context.num_slices = 1


_PROMPT_SHAPES = {
    "input_points": "(batch, point_batch, points, 2) in (x, y) pixels",
    "input_labels": "(batch, point_batch, points)",
    "input_boxes": "(batch, boxes, 4) as (x1, y1, x2, y2)",
    "input_masks": "(batch, 1, 4E, 4E)",
}


def _checks_values() -> bool:
    """Whether the NaN/inf checks of the inputs run: in eager mode, not while `torch.compile` traces.

    A check on tensor *values* needs the host to read a device result, which a compiled graph cannot contain:
    dynamo would break the graph at every forward (and sync a GPU). Shape checks cost nothing and always run; a
    compiled model trusts its inputs to be finite, as SAM itself does.
    """
    return not torch.compiler.is_compiling()


def _pop_pixel_values(args: tuple, kwargs: dict) -> tuple[tuple, dict, torch.Tensor | None]:
    """`pixel_values` may come first positionally or by keyword; return it and the call without it."""
    if args and isinstance(args[0], torch.Tensor):
        return args[1:], kwargs, args[0]
    return args, kwargs, kwargs.pop("pixel_values", None)


def _check_pixel_values(pixel_values: torch.Tensor, vision_config: Any) -> None:
    if pixel_values.ndim not in (4, 5):
        raise MedSAValueError(
            "pixel_values must be 4-D images (batch, channels, height, width) or 5-D volumes "
            f"(batch, channels, slices, height, width); got shape {tuple(pixel_values.shape)}."
        )
    if pixel_values.shape[0] == 0 or (pixel_values.ndim == 5 and pixel_values.shape[2] == 0):
        raise MedSAValueError(
            f"pixel_values of shape {tuple(pixel_values.shape)} hold no image: the batch (and, for volumes, the "
            "number of slices on dim 2) must be at least 1."
        )
    channels, height, width = pixel_values.shape[1], *pixel_values.shape[-2:]
    size = vision_config.image_size
    if channels != vision_config.num_channels or (height, width) != (size, size):
        raise MedSAValueError(
            f"pixel_values of shape {tuple(pixel_values.shape)} do not fit this SAM: it takes "
            f"{vision_config.num_channels} channels at {size}x{size} (channels on dim 1, slices on dim 2 for "
            "volumes). Resize and pad with SamProcessor (or peft_medsa.data) first."
        )
    if _checks_values() and not torch.isfinite(pixel_values).all():
        count = int((~torch.isfinite(pixel_values)).sum())
        raise MedSAValueError(
            f"pixel_values hold {count} NaN or infinite value(s); the masks would be NaN. Fix the image (or its "
            "normalisation) first."
        )


def _check_image_embeddings(embeddings: torch.Tensor, config: Any) -> None:
    vision = config.vision_config
    size = vision.image_size // vision.patch_size
    expected = (vision.output_channels, size, size)
    if embeddings.ndim != 4 or tuple(embeddings.shape[1:]) != expected or embeddings.shape[0] == 0:
        raise MedSAValueError(
            f"image_embeddings must have shape (batch >= 1, {', '.join(map(str, expected))}) for this SAM, got "
            f"{tuple(embeddings.shape)}. Compute them with `model.get_image_embeddings(pixel_values)`."
        )
    if _checks_values() and not torch.isfinite(embeddings).all():
        raise MedSAValueError("image_embeddings hold NaN or infinite values.")


def _check_prompt_agreement(kwargs: dict, config: Any) -> None:
    """Clicks need one label each, and a mask prompt must be at 4x the embedding resolution."""
    points, labels, masks = (kwargs.get(k) for k in ("input_points", "input_labels", "input_masks"))
    if points is not None and labels is not None and tuple(points.shape[:3]) != tuple(labels.shape):
        raise MedSAValueError(
            f"input_points {tuple(points.shape)} and input_labels {tuple(labels.shape)} disagree: give one label "
            "per point, input_labels of shape (batch, point_batch, points)."
        )
    if points is not None and labels is None:
        raise MedSAValueError("input_points need input_labels (1: positive click, 0: negative click).")
    if masks is not None:
        size = 4 * (config.vision_config.image_size // config.vision_config.patch_size)
        if tuple(masks.shape[1:]) != (1, size, size):
            raise MedSAValueError(
                f"input_masks must have shape (batch, 1, {size}, {size}) for this SAM (4x the image embedding), "
                f"got {tuple(masks.shape)}."
            )


def _describe_batch(pixel_values: torch.Tensor) -> str:
    if pixel_values.ndim == 5:
        batch, _, depth = pixel_values.shape[:3]
        return f"a batch of {batch} volume(s) x {depth} slices"
    return f"a batch of {pixel_values.shape[0]} image(s)"


def _num_output_tokens(model: nn.Module) -> int:
    """How many output tokens (SAM 2's object score, IoU, masks, SamHQ's HQ token) precede the prompt tokens in the
    decoder's queries."""
    decoder = model.mask_decoder
    tokens = decoder.iou_token.num_embeddings + decoder.mask_tokens.num_embeddings
    extra = [getattr(decoder, name, None) for name in ("hq_token", "obj_score_token")]
    return tokens + sum(token.num_embeddings for token in extra if token is not None)


def _block_index(key: str) -> int:
    """The image-encoder block a module belongs to: the first index in its name (`...layers.3`, `...blocks.3.attn`)."""
    return next(int(part) for part in key.split(".") if part.isdigit())


def _check_adapter_family(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse an adapter saved from another SAM generation: its tensors would name modules this model lacks."""
    saved, base = family_of_adapter(list(state_dict)), family_of_adapter(list(model.state_dict()))
    if saved is not None and base is not None and saved != base:
        raise MedSAValueError(
            f"This Med-SA adapter was trained on a {saved.name} model ({saved.model_classes}), but the base model "
            f"is a {base.name} model ({base.model_classes}): its adapters do not fit. Load it onto a {saved.name} "
            "model of the checkpoint named by `base_model_name_or_path` in its adapter_config.json."
        )
