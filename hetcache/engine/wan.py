"""The Wan / Wan-VACE adapter: where their transformers keep blocks and heads, and each block's arguments and maths."""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel, WanTransformerBlock
from diffusers.models.transformers.transformer_wan_vace import WanVACETransformer3DModel, WanVACETransformerBlock

from .registry import MAIN, VACE, BlockAdapter, TransformerAdapter, register_block, register_transformer
from .wan_blocks import block_body, block_kv, text_kv, vace_project_in, vace_project_out

WAN_ARGUMENTS = {"hidden": "hidden_states", "text": "encoder_hidden_states", "temb": "temb", "rope": "rotary_emb"}

register_block(
    WanTransformerBlock,
    BlockAdapter(
        kind=MAIN,
        arguments=WAN_ARGUMENTS,
        body=block_body,
        kv=block_kv,
        text_kv=lambda block, text: text_kv(block.attn2, text),
    ),
)
register_block(
    WanVACETransformerBlock,
    BlockAdapter(
        kind=VACE,
        arguments={**WAN_ARGUMENTS, "control": "control_hidden_states"},
        stream="control",
        body=block_body,
        kv=block_kv,
        text_kv=lambda block, text: text_kv(block.attn2, text),
        project_in=vace_project_in,
        project_out=vace_project_out,
    ),
)
for transformer_class in (WanTransformer3DModel, WanVACETransformer3DModel):
    register_transformer(
        transformer_class,
        TransformerAdapter(
            main_blocks="blocks",
            vace_blocks="vace_blocks" if transformer_class is WanVACETransformer3DModel else None,
            head="norm_out",
            head_input_dtype=torch.float32,  # Wan calls norm_out(hidden_states.float())
            text_embedder="condition_embedder",
            text_output_index=2,
        ),
    )
