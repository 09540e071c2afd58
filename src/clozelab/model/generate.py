"""Greedy decoding with an encoder-decoder (text-to-text fine-tuning and scoring).

The encoder runs once; the decoder then extends every row by its most likely next token until
each row has written ``eos_id`` or ``max_length`` tokens are out. With ``use_cache`` (the
default) each step feeds only the newest token: the decoder's ``DecoderCache`` keeps every
layer's self-attention keys/values and the cross-attention keys/values of the encoder output,
projected once (``clozelab.model.decoder``). ``use_cache=False`` re-reads the whole prefix at each
step (the reference the cache is tested against: identical outputs).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clozelab.model.decoder import Decoder


@torch.no_grad()
def greedy_decode(
    embedding: nn.Module,
    encoder: nn.Module,
    decoder: Decoder,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    start_id: int,
    eos_id: int,
    pad_id: int,
    max_length: int = 32,
    token_type_ids: Tensor | None = None,
    use_cache: bool = True,
) -> Tensor:
    """[B, <= max_length] generated ids (without the start token); after a row's ``eos_id``
    the row holds ``pad_id``. ``max_length`` counts the eos."""
    memory = encoder(embedding(input_ids, token_type_ids), attention_mask).last_hidden_state
    B = input_ids.shape[0]
    prefix = torch.full((B, 1), start_id, dtype=torch.long, device=input_ids.device)
    cache = decoder.new_cache() if use_cache else None
    fed = prefix  # what the decoder reads this step: the newest token, or the whole prefix
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    out = []
    for _ in range(max_length):
        hidden = decoder(fed, embedding, memory, attention_mask, cache=cache)[:, -1]  # (B, H)
        step = decoder.logits(hidden, embedding).argmax(-1)  # (B,)
        step = step.masked_fill(done, pad_id)
        out.append(step)
        done |= step == eos_id
        if bool(done.all()):
            break
        prefix = torch.cat([prefix, step[:, None]], dim=1)
        fed = step[:, None] if use_cache else prefix
    return torch.stack(out, dim=1)


def strip_after_eos(ids: list[int], eos_id: int) -> list[int]:
    """The tokens before the first ``eos_id``."""
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


__all__ = ["greedy_decode", "strip_after_eos"]
