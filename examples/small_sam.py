"""A random SAM small enough for a CPU (128 px, 4 blocks): the offline stand-in for facebook/sam-vit-base."""

from transformers import SamConfig, SamModel


def small_sam_config() -> SamConfig:
    vision = dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, image_size=128, patch_size=16,
                  output_channels=64, window_size=4, global_attn_indexes=[1, 3], num_pos_feats=32, mlp_dim=384)
    init = dict(initializer_range=0.1)  # SAM's 0.02 gives a random model near-zero logits that barely train
    return SamConfig(
        vision_config={**vision, **init},
        prompt_encoder_config=dict(hidden_size=64, image_size=128, patch_size=16, **init),
        mask_decoder_config=dict(hidden_size=64, mlp_dim=256, num_attention_heads=2, iou_head_hidden_dim=64, **init),
        **init,
    )


def small_sam() -> SamModel:
    return SamModel(small_sam_config())
