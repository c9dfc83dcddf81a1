"""Med-SA's adapter layers: the wrappers that replace SAM's image-encoder blocks and mask-decoder blocks.

- `MedSAVisionLayer` wraps a `SamVisionLayer`: Space adapter (serial, after attention), MLP adapter (parallel,
  scaled) and, for volumes, the SD-Trans depth branch with its Depth adapter.
- `MedSAAttentionLayer` and `MedSAMLPLayer` wrap the attention and the MLP of a SAM 2 (Hiera) or SAM 3 tracker
  image-encoder block: the same Space and MLP adapters, at each block's own width (see `families`).
- `MedSADecoderLayer` wraps a two-way block of any family's mask decoder (`SamTwoWayAttentionBlock` and its SAM 2 /
  SAM 3 tracker twins): HyP-Adpt (prompt-conditioned, after the token self-attention), an adapter parallel to the
  MLP, and one after the image-to-token cross-attention.

Every adapter is a bottleneck `up(act(down(x)))`. Its two projections live in separate `nn.ModuleDict`s keyed by
adapter name, each value a leaf `nn.Linear`, so that saved keys never contain the adapter name (peft strips it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .config import MedSAConfig
from .errors import MedSAValueError

# The bottlenecks of each wrapper; their projections are the ModuleDicts `medsa_{name}_down` / `medsa_{name}_up`.
VISION_ADAPTERS = ("space", "mlp", "depth")
DECODER_ADAPTERS = ("hyper", "mlp", "cross")


def _projection_dicts(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"medsa_{name}_{side}" for name in names for side in ("down", "up"))


class MedSALayer(BaseTunerLayer):
    """State and adapter bookkeeping shared by both wrappers (a peft tuner layer)."""

    adapter_names_in_layer: tuple[str, ...] = ()
    # Non-tensor, per-adapter settings (activation, scale, ...): deleted with the adapter, never saved.
    other_param_names = ("medsa_settings",)

    def _init_medsa_state(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        for name in self.adapter_names_in_layer:
            setattr(self, f"medsa_{name}_down", nn.ModuleDict())
            setattr(self, f"medsa_{name}_up", nn.ModuleDict())
        self.medsa_settings: dict[str, MedSAConfig] = {}
        self._disable_adapters = False
        self.merged_adapters = []

    def _add_bottleneck(self, name: str, adapter_name: str, width: int, config: MedSAConfig) -> None:
        """Add one bottleneck adapter `width -> round(ratio * width) -> width` for `adapter_name`."""
        hidden = max(1, round(config.adapter_ratio * width))
        down, up = nn.Linear(width, hidden), nn.Linear(hidden, width)
        if config.init_weights == "identity":
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        getattr(self, f"medsa_{name}_down")[adapter_name] = down
        getattr(self, f"medsa_{name}_up")[adapter_name] = up

    def _has(self, name: str, adapter_name: str) -> bool:
        return adapter_name in getattr(self, f"medsa_{name}_down")

    def _bottleneck(self, name: str, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """`up(act(down(x)))`, computed in the adapter's dtype and returned in the input's dtype."""
        down = getattr(self, f"medsa_{name}_down")[adapter_name]
        up = getattr(self, f"medsa_{name}_up")[adapter_name]
        act = _ACTIVATIONS[self.medsa_settings[adapter_name].activation]
        return up(act(down(x.to(down.weight.dtype)))).to(x.dtype)

    def _active(self, name: str) -> list[str]:
        """The active adapters that have the bottleneck `name` in this layer."""
        return [a for a in self.active_adapters if self._has(name, a)]

    def _sum_of(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """Sum over the active adapters of bottleneck `name` applied to `x` (None when none is active)."""
        outputs = [self._bottleneck(name, a, x) for a in self._active(name)]
        return sum(outputs[1:], outputs[0]) if outputs else None

    def _mlp_with_adapters(self, mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The block's MLP with Med-SA's parallel adapters beside it: `MLP(x) + s * Adapter_mlp(x)`."""
        out = mlp(x)
        for adapter_name in self._active("mlp"):
            out = out + self.medsa_settings[adapter_name].mlp_scale * self._bottleneck("mlp", adapter_name, x)
        return out

    def _uses_adapters(self) -> bool:
        return not self.disable_adapters and any(a in self.medsa_settings for a in self.active_adapters)

    def _finish_update(self, adapter_name: str, config: MedSAConfig) -> None:
        self.medsa_settings[adapter_name] = config
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module):
        # A whole block has no `.weight`: take its first parameter's device and dtype.
        parameter = next(base_layer.parameters())
        return parameter.device, parameter.dtype

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise MedSAValueError(_NOT_MERGEABLE)

    def unmerge(self) -> None:
        raise MedSAValueError(_NOT_MERGEABLE)


_NOT_MERGEABLE = (
    "Med-SA adapters cannot be merged into SAM's weights: they are non-linear (bottleneck with an activation, "
    "depth attention, prompt-generated weights). Keep the PeftModel for inference, or call `unload()` to get the "
    "original SamModel back."
)
_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class SliceContext:
    """How many slices (D) each volume of the current batch has; shared by a model's vision wrappers.

    `MedSAModel` sets it while a 5-D input runs; each vision wrapper reads it when it is *called* and passes it as
    an argument, so a gradient-checkpointing replay in the backward pass sees the same D as the forward did.
    """

    def __init__(self) -> None:
        self.num_slices = 1


class MedSAVisionLayer(GradientCheckpointingLayer, MedSALayer):
    """A SAM image-encoder block with Med-SA's Space, MLP and Depth adapters (SD-Trans).

    Input `hidden_states` is `(B*D, H, W, C)`, the D slices of each volume consecutive (volume-major).
    `num_slices` (D) is injected by `MedSAModel` for 5-D input; with D = 1 the depth branch is skipped.
    """

    adapter_names_in_layer = VISION_ADAPTERS
    adapter_layer_names = _projection_dicts(VISION_ADAPTERS)

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: MedSAConfig, slice_context: SliceContext
    ) -> None:
        super().__init__()
        self._init_medsa_state(base_layer)
        self.window_size = base_layer.window_size  # read by SamHQ's encoder to find global blocks
        self.slice_context = slice_context
        self.register_forward_pre_hook(self._pass_num_slices, with_kwargs=True)
        self.update_layer(adapter_name, config)

    def _pass_num_slices(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs.setdefault("num_slices", self.slice_context.num_slices)
        return args, kwargs

    def update_layer(self, adapter_name: str, config: MedSAConfig) -> None:
        width = self.base_layer.layer_norm1.normalized_shape[0]
        self._add_bottleneck("space", adapter_name, width, config)
        self._add_bottleneck("mlp", adapter_name, width, config)
        if config.depth_attention:
            self._add_bottleneck("depth", adapter_name, width, config)
        self._finish_update(adapter_name, config)

    def forward(self, hidden_states: torch.Tensor, num_slices: int = 1) -> torch.Tensor:
        if not self._uses_adapters():
            return self.base_layer(hidden_states)
        base = self.base_layer
        normed = base.layer_norm1(hidden_states)  # shared by the spatial and the depth branch
        depth_adapters = self._active("depth") if num_slices > 1 else []
        attention, qkv = self._spatial_attention(normed, keep_qkv=bool(depth_adapters))
        depth = self.depth_attention(qkv, num_slices) if depth_adapters else None

        space = self._sum_of("space", attention)
        if space is not None:  # serial Space adapter: a = a + Adapter(a)
            attention = attention + space
        hidden_states = hidden_states + attention
        if depth is not None:
            hidden_states = hidden_states + self._sum_of("depth", depth)

        return hidden_states + self._mlp_with_adapters(base.mlp, base.layer_norm2(hidden_states))

    def _spatial_attention(
        self, normed: torch.Tensor, keep_qkv: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """SAM's own (windowed or global) attention over the tokens of each slice, (B*D, H, W, C), and with
        `keep_qkv` the `qkv` projection it used, on the whole slice (B*D, H, W, 3C), for SD-Trans's depth branch.

        The depth branch sees the whole, un-windowed slice, so it always mixes the *same* token position across
        the D slices of one volume, in windowed blocks too; volumes never mix.
        """
        base = self.base_layer
        if base.window_size == 0:
            qkv = base.attn.qkv(normed)
            return self._attend_within_windows(qkv), (qkv if keep_qkv else None)
        height, width = normed.shape[1:3]
        windows, padded = base.window_partition(normed, base.window_size)  # (B*D*nW, ws, ws, C)
        qkv = base.attn.qkv(windows)  # (B*D*nW, ws, ws, 3C): padding tokens get the bias, as in SAM
        spatial = base.window_unpartition(
            self._attend_within_windows(qkv), base.window_size, padded, (height, width)
        )
        if not keep_qkv:
            return spatial, None
        return spatial, base.window_unpartition(qkv, base.window_size, padded, (height, width))

    def _attend_within_windows(self, qkv: torch.Tensor) -> torch.Tensor:
        """SAM's multi-head attention with decomposed relative positions, from a precomputed qkv (b, h, w, 3C).

        SAM adds the relative positions as a (tokens x tokens) bias, which keeps PyTorch's attention on its slow,
        memory-bound path (4 x 805 MB per global block of ViT-B at 1024 px). The bias is a sum of a height and a
        width term, each indexed by the key's row or column, so it folds into the dot product instead: the query
        gains its two terms, the key one-hot codes of its row and column. The result is SAM's attention up to
        rounding, computed by the fused kernel in O(tokens) memory.
        """
        attn = self.base_layer.attn
        batch, height, width, _ = qkv.shape
        heads = attn.num_attention_heads
        # (b, h, w, 3C) -> 3 x (b, heads, h*w, head_dim)
        query, key, value = qkv.reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = attn.dropout if self.training else 0.0
        if not attn.use_rel_pos:
            out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)
        else:
            query, key, value = _fold_relative_positions(attn, query, key, value, height, width)
            out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=1.0)
            out = out[..., : qkv.shape[-1] // (3 * heads)]
        out = out.transpose(1, 2).reshape(batch, height, width, -1)  # (b, h, w, C)
        return attn.proj(out)

    def depth_attention(self, qkv: torch.Tensor, num_slices: int) -> torch.Tensor:
        """SD-Trans: attention over the D slices at each token position, with the block's frozen projections.

        `qkv` is `(B*D, H, W, 3C)`; returns `(B*D, H, W, C)`. No relative position is used along depth.
        """
        attn = self.base_layer.attn
        batch_slices, height, width, three_c = qkv.shape
        if batch_slices % num_slices:
            raise MedSAValueError(f"{batch_slices} slices do not split into volumes of {num_slices} slices.")
        volumes, heads, tokens = batch_slices // num_slices, attn.num_attention_heads, height * width
        # (B*D, H, W, 3C) -> (B, D, N, 3, heads, hd) -> 3 x (B, N, heads, D, hd)
        qkv = qkv.reshape(volumes, num_slices, tokens, 3, heads, three_c // (3 * heads))
        query, key, value = qkv.permute(3, 0, 2, 4, 1, 5).unbind(0)
        dropout = attn.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout)  # (B, N, heads, D, hd)
        out = attn.proj(out.permute(0, 3, 1, 2, 4).reshape(volumes, num_slices, tokens, -1))  # (B, D, N, C)
        return out.reshape(batch_slices, height, width, -1)


class MedSABlockPartLayer(nn.Module, MedSALayer):
    """One part (attention or MLP) of a SAM 2-family image-encoder block with one Med-SA bottleneck of the block's
    width; the subclasses name the bottleneck (`adapter_names_in_layer`) and place it (`forward`)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MedSAConfig, width: int) -> None:
        super().__init__()
        self._init_medsa_state(base_layer)
        self.width = width
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: MedSAConfig) -> None:
        self._add_bottleneck(self.adapter_names_in_layer[0], adapter_name, self.width, config)
        self._finish_update(adapter_name, config)


class MedSAAttentionLayer(MedSABlockPartLayer):
    """The attention of a SAM 2 (Hiera) or SAM 3 tracker image-encoder block, followed by Med-SA's Space adapter.

    The adapter is serial, `a + Adapter(a)`, on the attention output `a`: token-wise, so it is the same whether the
    block calls attention on windows or on the whole image, before or after Hiera's query pooling. `width` is the
    block's width after attention (its output width at a stage change). Attention may return a tensor (SAM 2) or a
    tuple whose first item is the output (SAM 3); the wrapper returns the same structure.
    """

    adapter_names_in_layer = ("space",)
    adapter_layer_names = _projection_dicts(adapter_names_in_layer)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor | tuple:
        output = self.base_layer(*args, **kwargs)
        attention = output[0] if isinstance(output, tuple) else output
        space = self._sum_of("space", attention) if self._uses_adapters() else None
        if space is None:
            return output
        attention = attention + space
        return (attention, *output[1:]) if isinstance(output, tuple) else attention


class MedSAMLPLayer(MedSABlockPartLayer):
    """The MLP of a SAM 2 or SAM 3 tracker image-encoder block with Med-SA's parallel adapter:
    `MLP(x) + s * Adapter(x)`, x the block's normalised hidden states of width `width`."""

    adapter_names_in_layer = ("mlp",)
    adapter_layer_names = _projection_dicts(adapter_names_in_layer)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self._uses_adapters():
            return self.base_layer(hidden_states)
        return self._mlp_with_adapters(self.base_layer, hidden_states)


class MedSADecoderLayer(nn.Module, MedSALayer):
    """A SAM mask-decoder two-way block with HyP-Adpt, an MLP adapter and a post-cross-attention adapter.

    The queries are `cat(iou_token, mask_tokens, [hq_token], sparse_prompt_tokens)`: the prompt tokens are the
    last ones of `query_point_embedding`, which is why HyP-Adpt needs no hook to see the prompt.
    """

    adapter_names_in_layer = DECODER_ADAPTERS
    adapter_layer_names = (
        *_projection_dicts(DECODER_ADAPTERS),
        "medsa_hyper_norm",
        "medsa_hypernet_in",
        "medsa_hypernet_out",
    )

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: MedSAConfig, num_output_tokens: int
    ) -> None:
        super().__init__()
        self._init_medsa_state(base_layer)
        self.medsa_hyper_norm = nn.ModuleDict()
        self.medsa_hypernet_in = nn.ModuleDict()
        self.medsa_hypernet_out = nn.ModuleDict()
        self.num_output_tokens = num_output_tokens
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: MedSAConfig) -> None:
        width = self.base_layer.layer_norm1.normalized_shape[0]
        self._add_bottleneck("mlp", adapter_name, width, config)
        self._add_bottleneck("cross", adapter_name, width, config)
        if config.hyper_prompt:
            self._add_bottleneck("hyper", adapter_name, width, config)
            rank = self.medsa_hyper_down[adapter_name].out_features
            # The hypernetwork: pooled prompt embedding (width) -> rank -> an (rank x rank) weight per sample.
            # In the "add" ablation its first layer alone maps the prompt into the reduced space.
            self.medsa_hypernet_in[adapter_name] = nn.Linear(width, rank)
            if config.hyper_prompt_mode == "generate":
                self.medsa_hypernet_out[adapter_name] = nn.Linear(rank, rank * rank)
            self.medsa_hyper_norm[adapter_name] = nn.LayerNorm(rank)
        self._finish_update(adapter_name, config)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_point_embedding: torch.Tensor,
        key_point_embedding: torch.Tensor,
        attention_similarity: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        base = self.base_layer
        if not self._uses_adapters():
            return base(
                queries, keys, query_point_embedding, key_point_embedding, attention_similarity, **kwargs
            )

        # Token self-attention, then HyP-Adpt. queries: (B, P, T, C); keys: (B*P, 1, HW, C).
        if base.skip_first_layer_pe:
            queries = base.self_attn(query=queries, key=queries, value=queries)[0]
        else:
            query = queries + query_point_embedding
            queries = queries + base.self_attn(query=query, key=query, value=queries)[0]
        prompt_tokens = query_point_embedding[:, :, self.num_output_tokens :, :]  # (B, P, Np, C)
        for adapter_name in self._active("hyper"):
            queries = queries + self.hyper_prompt_adapter(adapter_name, queries, prompt_tokens)
        queries = base.layer_norm1(queries)

        # Tokens attend to the image.
        query, key = queries + query_point_embedding, keys + key_point_embedding
        queries = (
            queries
            + base.cross_attn_token_to_image(
                query=query, key=key, value=keys, attention_similarity=attention_similarity
            )[0]
        )
        queries = base.layer_norm2(queries)

        queries = base.layer_norm3(queries + self._mlp_with_adapters(base.mlp, queries))

        # The image attends to the tokens; the adapter sits on the residual, before the norm.
        query, key = queries + query_point_embedding, keys + key_point_embedding
        attn_out = base.cross_attn_image_to_token(query=key, key=query, value=queries)[0]
        keys = keys + attn_out
        cross = self._sum_of("cross", keys)
        if cross is not None:
            keys = keys + cross
        keys = base.layer_norm4(keys)
        return queries, keys, attn_out

    def _prompt_features(self, adapter_name: str, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """The mean prompt token through the hypernetwork's first layer: (B, P, Np, C) -> (B, P, r).

        Without prompt tokens the mean is zero.
        """
        hypernet_in = self.medsa_hypernet_in[adapter_name]
        if prompt_tokens.shape[2] == 0:
            pooled = prompt_tokens.new_zeros(*prompt_tokens.shape[:2], prompt_tokens.shape[-1])
        else:
            pooled = prompt_tokens.mean(dim=2)
        return hypernet_in(pooled.to(hypernet_in.weight.dtype))

    def prompt_weights(self, adapter_name: str, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """HyP-Adpt's hypernetwork: the (r x r) weight of each sample, from its mean prompt token.

        prompt_tokens: (B, P, Np, C) -> weights (B, P, r, r).
        """
        act = _ACTIVATIONS[self.medsa_settings[adapter_name].activation]
        features = act(self._prompt_features(adapter_name, prompt_tokens))  # (B, P, r)
        rank = features.shape[-1]
        return self.medsa_hypernet_out[adapter_name](features).reshape(*features.shape[:2], rank, rank)

    def hyper_prompt_adapter(
        self, adapter_name: str, x: torch.Tensor, prompt_tokens: torch.Tensor
    ) -> torch.Tensor:
        """HyP-Adpt: `up(act(Norm(down(x) @ w(prompt))))`, w generated per sample. x: (B, P, T, C).

        The "add" ablation (plain prompt fusion) adds the projected prompt instead: `down(x) + W_p prompt`.
        """
        down = self.medsa_hyper_down[adapter_name]
        up = self.medsa_hyper_up[adapter_name]
        act = _ACTIVATIONS[self.medsa_settings[adapter_name].activation]
        reduced = down(x.to(down.weight.dtype))  # (B, P, T, r)
        if self.medsa_settings[adapter_name].hyper_prompt_mode == "generate":
            reduced = reduced @ self.prompt_weights(adapter_name, prompt_tokens)  # (B, P, r, r)
        else:
            reduced = reduced + self._prompt_features(adapter_name, prompt_tokens)[:, :, None, :]
        return up(act(self.medsa_hyper_norm[adapter_name](reduced))).to(x.dtype)


def _fold_relative_positions(
    attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value (b, heads, h*w, head_dim) whose plain scaled-by-1 attention equals SAM's attention with
    decomposed relative positions: q' = [q * scale, q . R_h, q . R_w], k' = [k, onehot(row), onehot(column)], and
    the value zero-padded to the same width (the fused kernels need one head width)."""
    head_dim = query.shape[-1]
    rel_h = attn.get_rel_pos(height, height, attn.rel_pos_h).to(query.dtype)  # (h, h_key, head_dim)
    rel_w = attn.get_rel_pos(width, width, attn.rel_pos_w).to(query.dtype)  # (w, w_key, head_dim)
    grid = query.reshape(*query.shape[:2], height, width, head_dim)
    query_terms = (
        query * attn.scale,
        torch.einsum("bnhwc,hkc->bnhwk", grid, rel_h).flatten(2, 3),
        torch.einsum("bnhwc,wkc->bnhwk", grid, rel_w).flatten(2, 3),
    )
    rows = torch.eye(height, dtype=key.dtype, device=key.device).repeat_interleave(width, dim=0)  # (h*w, h)
    columns = torch.eye(width, dtype=key.dtype, device=key.device).repeat(height, 1)  # (h*w, w)
    key_terms = (key, rows.expand(*key.shape[:2], -1, -1), columns.expand(*key.shape[:2], -1, -1))
    value = F.pad(value, (0, height + width))
    return torch.cat(query_terms, dim=-1), torch.cat(key_terms, dim=-1), value
