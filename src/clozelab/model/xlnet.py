"""XLNet's encoder: two-stream relative self-attention (Yang et al. 2019 §2.3-2.5; SPECS §18).

Two streams share every weight. The **content stream** h is the usual representation: position
i attends to the positions its factorisation order lets it see, itself included. The **query
stream** g starts from one trainable vector (``mask_emb``, the paper's w) at each predicted
position and attends to the content of the positions before it in the order, never to its own
content, so the LM head reading g knows where the target is but not what it is. Without a
``perm_mask`` both streams' masks are "see everything" (bidirectional, as in fine-tuning) and
without a ``target_mapping`` no query stream runs.

Attention scores are Transformer-XL's (Dai et al. 2019) plus XLNet's relative segments:

    score[i, j] = ((q_i + r_w)·k_j + (q_i + r_r)·R_{i-j} + (q_i + r_s)·s_{ij}) / sqrt(d)

with R the sinusoidal encoding of the relative distance projected by ``r``, and s_{ij} one of two
learned vectors (``seg_embed``) for "same segment" / "different segment". The position and
segment terms are computed once per layer as a [B, nh, rows, K] bias (the relative shift is a
zero-copy reshape on the content rows and a gather on the query rows) and handed to
``F.scaled_dot_product_attention`` as its additive mask together with (q + r_w, k, v), so the
content term, softmax and value product run in SDPA's fused kernels.

The query stream is computed only at the M predicted positions (``target_mapping`` rows, one-hot
or all zero for padding), not at every position as HF does; an all-zero row gets a zero attention
vector, as in HF.

Memory (Transformer-XL recurrence): ``forward(..., mems=[...])`` attends to cached states of a
previous segment (every memory position is visible), and with ``mem_len > 0`` the output carries
the new per-layer memories (the last ``mem_len`` states, detached), as HF's ``use_mems``.

Shape legend: B batch, T sequence length, M predicted positions, K keys (memory + T),
P relative positions (K + T), H hidden size, nh heads, hs head size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clozelab.core.errors import config_error
from clozelab.model.dropout import Dropout, dropout
from clozelab.model.encoder import Encoder, EncoderOutput, FeedForward
from clozelab.model.layers import canonical_activation, init_bert_weights


@dataclass
class TwoStreamOutput(EncoderOutput):
    """``EncoderOutput`` (the content stream) plus the query stream and the memories.

    ``query_hidden_state`` is [B, M, H], row m the query stream at the position of
    ``target_mapping[:, m]`` (None without a target mapping); ``mems`` one [B, mem_len, H]
    tensor per layer (the layer inputs) when the encoder keeps memories, else None.
    """

    query_hidden_state: Tensor | None = None
    mems: tuple[Tensor, ...] | None = None


def relative_position_encoding(klen: int, qlen: int, size: int, clamp_len: int, device) -> Tensor:
    """[klen + qlen, size] sinusoids of the relative distances klen, klen - 1, ..., 1 - qlen
    (sin on the first half of the columns, cos on the second, as Transformer-XL/XLNet)."""
    freq = torch.arange(0, size, 2, dtype=torch.int64, device=device).float()
    inv_freq = 1 / torch.pow(10000, freq / size)  # (size/2,)
    distance = torch.arange(klen, -qlen, -1, dtype=torch.int64, device=device).float()  # (P,)
    if clamp_len > 0:
        distance = distance.clamp(-clamp_len, clamp_len)
    angle = distance[:, None] * inv_freq  # (P, size/2)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)  # (P, size)


def rel_shift(scores: Tensor, klen: int) -> Tensor:
    """[B, nh, Q, P] scores against every relative position -> [B, nh, Q, klen] scores against
    the keys: out[..., i, j] = scores[..., i, j + Q - i] (distance of query i to key j).

    A strided view of the contiguous scores (element i*P + Q - i + j is Q + i*(P-1) + j), so
    neither the shift nor its gradient copies the [B, nh, Q, P] tensor more than once.
    """
    scores = scores.contiguous()
    b, n, q, p = scores.shape
    return scores.as_strided(
        (b, n, q, klen), (n * q * p, q * p, p - 1, 1), scores.storage_offset() + q
    )


@dataclass
class _Context:
    """What every layer shares in one forward pass (built once by ``XLNetEncoder.forward``)."""

    pos: Tensor  # (P, H) relative encodings
    mask_h: Tensor | None  # (B, 1, T, K) bool, True = may attend
    seg_h: Tensor | None  # (B, 1, T, K) float, 1 = key in another segment
    mask_g: Tensor | None = None  # (B, 1, M, K) bool: the query rows
    seg_g: Tensor | None = None  # (B, 1, M, K) float
    rel_index_g: Tensor | None = None  # (B, nh, M, K): column of P for query row m, key j
    target_valid: Tensor | None = None  # (B, M) float, 0 on padding rows of target_mapping


class RelativeAttention(nn.Module):
    """Two-stream multi-head attention with relative positions and segments (one XLNet layer's
    attention block: scores, softmax, output projection, dropout, residual, LayerNorm)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, layer_norm_eps: float):
        super().__init__()
        self.num_heads, self.head_size = num_heads, hidden_size // num_heads
        self.attention_dropout = dropout
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)  # rows [q; k; v]
        self.r = nn.Linear(hidden_size, hidden_size, bias=False)  # relative position keys
        self.o = nn.Linear(hidden_size, hidden_size, bias=False)
        self.r_w_bias = nn.Parameter(torch.zeros(num_heads, self.head_size))  # content bias
        self.r_r_bias = nn.Parameter(torch.zeros(num_heads, self.head_size))  # position bias
        self.r_s_bias = nn.Parameter(torch.zeros(num_heads, self.head_size))  # segment bias
        self.seg_embed = nn.Parameter(torch.zeros(2, num_heads, self.head_size))  # same / diff
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:2], self.num_heads, self.head_size).transpose(1, 2)

    def forward(
        self, h: Tensor, g: Tensor | None, ctx: _Context, mem: Tensor | None, content: bool = True
    ) -> Tensor:
        """h [B, T, H] (content), g [B, M, H] (query) or None, ``mem`` [B, mlen, H] or None ->
        [B, T + M, H]: the new content rows followed by the new query rows. ``content`` False
        (the last layer when nothing reads the content stream's output): only the query rows,
        [B, M, H]; the content stream then gives just its keys and values."""
        B, T, H = h.shape
        if content and mem is None:
            q, k, v = self.qkv(h).split(H, dim=-1)  # 3 x (B, T, H)
        else:
            w_q, w_kv = self.qkv.weight.split([H, 2 * H])
            q = F.linear(h, w_q) if content else None
            keys = h if mem is None else torch.cat([mem, h], dim=1)
            k, v = F.linear(keys, w_kv).split(H, dim=-1)  # (B, K, H)
        k, v = self._heads(k), self._heads(v)  # (B, nh, K, hs)
        pos_keys = self.r(ctx.pos).view(-1, self.num_heads, self.head_size).transpose(0, 1)
        rows, residual = [], []  # [content rows (B, T, H)], [query rows (B, M, H)]
        if content:
            q = self._heads(q)  # (B, nh, T, hs)
            position = self._position_scores(q, pos_keys)  # (B, nh, T, P)
            bias = self._bias(q, rel_shift(position, k.shape[2]), ctx.seg_h, ctx.mask_h)
            rows.append(self._attend(q, k, v, bias).transpose(1, 2).reshape(B, T, H))
            residual.append(h)
        if g is not None:
            M = g.shape[1]
            q_g = self._heads(F.linear(g, self.qkv.weight[:H]))  # (B, nh, M, hs)
            position = self._position_scores(q_g, pos_keys).gather(-1, ctx.rel_index_g)
            y_g = self._attend(q_g, k, v, self._bias(q_g, position, ctx.seg_g, ctx.mask_g))
            y_g = y_g * ctx.target_valid[:, None, :, None]  # HF: all-zero mapping rows -> 0
            rows.append(y_g.transpose(1, 2).reshape(B, M, H))
            residual.append(g)
        y = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)  # (B, T[+M] | M, H)
        x = residual[0] if len(residual) == 1 else torch.cat(residual, dim=1)
        return self.norm(self.dropout.add(x, self.o(y)))  # (B, T[+M] | M, H): [h; g]

    def _position_scores(self, q: Tensor, pos_keys: Tensor) -> Tensor:
        """(q + r_r)·R / sqrt(hs) against every relative distance: (B, nh, Q, P)."""
        return ((q + self.r_r_bias[:, None]) * self.head_size**-0.5) @ pos_keys.transpose(-1, -2)

    def _bias(self, q: Tensor, position: Tensor, seg: Tensor | None, mask) -> Tensor:
        """The additive attention mask: position + segment scores, scaled, masked.

        The segment score (q_i + r_s)·s_ij takes one of two values per row: the "same segment"
        one is added to every key of row i, which softmax ignores, so only the difference
        d_i = (q_i + r_s)·(s_diff - s_same) times "j is in another segment" is added (HF adds
        both; the attention probabilities are the same).
        """
        if seg is not None:
            delta = (self.seg_embed[1] - self.seg_embed[0]) * self.head_size**-0.5  # (nh, hs)
            d = ((q + self.r_s_bias[:, None]) * delta[:, None]).sum(-1, keepdim=True)  # (B,nh,Q,1)
            bias = torch.addcmul(position, d, seg)  # seg: (B, 1, Q, K) float, 1 = other segment
            if mask is not None:
                bias.masked_fill_(~mask, torch.finfo(bias.dtype).min)
            return bias
        if mask is not None:
            return position.masked_fill(~mask, torch.finfo(position.dtype).min)
        return position.contiguous()

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """softmax((q + r_w)·k / sqrt(hs) + bias) v, with dropout on the probabilities in
        training: (B, nh, Q, hs). SDPA without dropout; with dropout on CPU the same math with
        clozelab's cheaper dropout (SDPA would fall back to its math path with per-element
        Bernoulli draws)."""
        q = q + self.r_w_bias[:, None]
        p = self.attention_dropout if self.training else 0.0
        if p > 0.0 and q.device.type == "cpu":
            scores = torch.baddbmm(
                bias.flatten(0, 1),
                (q * self.head_size**-0.5).flatten(0, 1),
                k.flatten(0, 1).transpose(1, 2),
            ).view_as(bias)
            return dropout(scores.softmax(dim=-1), p) @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)


class XLNetLayer(nn.Module):
    """Relative two-stream attention, then the feed-forward block (dropout, residual, LN) on
    both streams at once (one matmul over the T content and M query rows)."""

    def __init__(self, hidden_size, num_heads, intermediate_size, dropout, activation, eps):
        super().__init__()
        self.attention = RelativeAttention(hidden_size, num_heads, dropout, eps)
        self.feed_forward = FeedForward(hidden_size, intermediate_size, activation)
        self.output_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = Dropout(dropout)

    def forward(
        self,
        h: Tensor,
        g: Tensor | None,
        ctx: _Context,
        mem: Tensor | None = None,
        content: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """(new h, new g); ``content`` False: (None, new g), the content rows not computed."""
        x = self.attention(h, g, ctx, mem, content)  # (B, T[+M] | M, H)
        ff = self.feed_forward.fc2(self.dropout(self.feed_forward.act(self.feed_forward.fc1(x))))
        x = self.output_norm(self.dropout.add(x, ff))
        if not content:
            return None, x
        if g is None:
            return x, None
        return x[:, : h.shape[1]], x[:, h.shape[1] :]


def target_positions(target_mapping: Tensor) -> tuple[Tensor, Tensor]:
    """HF's ``target_mapping`` [B, M, T] (one-hot rows, or all-zero padding rows) -> the
    predicted positions [B, M] (0 on padding rows) and a [B, M] float validity mask."""
    valid = target_mapping.sum(-1)  # (B, M): 1 or 0
    return target_mapping.argmax(-1), valid


class XLNetEncoder(Encoder):
    """XLNet's stack: relative two-stream attention layers (SPECS §18), HF ``XLNetModel``
    computation-exact.

    Args:
        hidden_size, num_layers, num_heads, intermediate_size: as ``TransformerEncoder``.
        dropout: dropout on the embeddings' query stream, the relative encodings, the attention
            probabilities, the attention and feed-forward outputs and the final states (XLNet
            uses one rate for all of them).
        activation: feed-forward activation (XLNet: gelu).
        layer_norm_eps: LayerNorm epsilon (XLNet: 1e-12).
        initializer_range: std of the normal initialisation (0.02), biases and ``mask_emb`` too.
        clamp_len: clamp relative distances to [-clamp_len, clamp_len] (<= 0: no clamp).
        mem_len: keep the last ``mem_len`` states of every layer as memory for the next segment
            (Transformer-XL recurrence; 0: off). Pre-training feeds independent sequences, so the
            recipes leave it off; ``forward(..., mems=...)`` uses given memories in any case.
    """

    batch_inputs = ("token_type_ids", "perm_mask", "target_mapping")
    skips_unread_output = True  # forward(..., content_output=False): the query stream only
    summary_pooling = "last"  # XLNet's [CLS] sits at the end: heads read the last real token
    hf_model_type = "xlnet"  # clozelab export writes an XLNetLMHeadModel directory

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float = 0.1,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
        initializer_range: float = 0.02,
        clamp_len: int = -1,
        mem_len: int = 0,
    ):
        super().__init__()
        if num_heads < 1 or hidden_size % num_heads:
            raise config_error(
                "model.hidden_size / model.num_heads",
                f"{hidden_size} / {num_heads}",
                "the hidden size must be a multiple of the number of heads",
                "choose model.num_heads dividing model.hidden_size",
            )
        if hidden_size % 2:
            raise config_error(
                "model.hidden_size",
                hidden_size,
                "the sinusoidal relative encodings need an even width",
                "use an even hidden size",
            )
        if num_layers < 1:
            raise config_error("model.num_layers", num_layers, "must be at least 1", "set >= 1")
        if not 0.0 <= dropout < 1.0:
            raise config_error("model.dropout", dropout, "must be in [0, 1)", "use 0.1")
        if mem_len < 0:
            raise config_error("encoder.mem_len", mem_len, "must be >= 0", "use 0 (off)")
        self.hidden_size, self.num_layers, self.num_heads = hidden_size, num_layers, num_heads
        self.intermediate_size, self.dropout_p = intermediate_size, dropout
        self.attention_dropout = dropout
        self.activation = canonical_activation(activation)
        self.layer_norm_eps, self.clamp_len, self.mem_len = layer_norm_eps, clamp_len, mem_len
        self.mask_emb = nn.Parameter(torch.zeros(hidden_size))  # w: the query stream's start
        self.layers = nn.ModuleList(
            XLNetLayer(
                hidden_size, num_heads, intermediate_size, dropout, self.activation, layer_norm_eps
            )
            for _ in range(num_layers)
        )
        self.dropout = Dropout(dropout)
        init_bert_weights(self, std=initializer_range)
        for layer in self.layers:
            a = layer.attention
            for param in (a.r_w_bias, a.r_r_bias, a.r_s_bias, a.seg_embed):
                nn.init.normal_(param, std=initializer_range)
        nn.init.normal_(self.mask_emb, std=initializer_range)

    @classmethod
    def check_pretraining(cls, node, cfg) -> None:
        """Transformer-XL memory needs each batch row to continue the previous batch's row; the
        pre-training loader feeds independent, shuffled sequences, so ``mem_len > 0`` is refused
        there (it works when encoding: ``forward(..., mems=...)``, HF ``use_mems`` parity)."""
        mem_len = node.get("mem_len") or 0
        if mem_len > 0:
            raise config_error(
                "encoder.mem_len",
                mem_len,
                "segment recurrence needs each batch row to continue the previous batch's row, "
                "and the pre-training loader feeds independent, shuffled sequences; memory is "
                "supported when encoding (XLNetEncoder(..., mems=...), HF use_mems parity)",
                "pre-train with encoder.mem_len=0",
            )

    def _context(self, hidden, attention_mask, token_type_ids, perm_mask, target_mapping, mlen):
        B, T, _ = hidden.shape
        device, klen = hidden.device, mlen + T
        pos = self.dropout(
            relative_position_encoding(klen, T, self.hidden_size, self.clamp_len, device).to(
                hidden.dtype
            )
        )
        keep = None  # (B, K) key may be attended (memory always)
        if attention_mask is not None and attention_mask.dim() == 2:
            keep = attention_mask.bool() if attention_mask.dtype != torch.bool else attention_mask
            if mlen:
                keep = torch.cat([keep.new_ones(B, mlen), keep], dim=1)
        blocked = None  # (B, T, K) True = i may not see j (query stream rule)
        if perm_mask is not None:
            blocked = perm_mask.bool() if perm_mask.dtype != torch.bool else perm_mask
            if mlen:
                blocked = torch.cat([blocked.new_zeros(B, T, mlen), blocked], dim=2)
        mask_g = None
        if blocked is not None:
            mask_g = ~blocked if keep is None else ~blocked & keep[:, None, :]  # (B, T, K)
        elif keep is not None:
            mask_g = keep[:, None, :].expand(B, T, klen)
        mask_h = None
        if mask_g is not None:  # the content stream also sees itself
            keys = torch.arange(klen, device=device)
            eye = keys[None, :] == keys[mlen:, None]  # (T, K): query i is key mlen + i
            mask_h = (mask_g | eye)[:, None]  # (B, 1, T, K)
        seg_diff = None
        if token_type_ids is not None:
            seg = token_type_ids
            keys = seg if not mlen else torch.cat([seg.new_zeros(B, mlen), seg], dim=1)
            seg_diff = (seg[:, :, None] != keys[:, None, :]).to(hidden.dtype)  # (B, T, K)
        ctx = _Context(pos, mask_h, None if seg_diff is None else seg_diff[:, None])
        if target_mapping is not None:
            target_pos, ctx.target_valid = target_positions(target_mapping.to(hidden.dtype))
            rows = target_pos[:, :, None].expand(-1, -1, klen)  # (B, M, K)
            if mask_g is not None:
                ctx.mask_g = mask_g.gather(1, rows)[:, None]  # (B, 1, M, K)
            if seg_diff is not None:
                ctx.seg_g = seg_diff.gather(1, rows)[:, None]  # (B, 1, M, K)
            # relative-distance column of query row m (position p) and key j: j + T - p
            index = torch.arange(klen, device=device)[None, None, :] + T - target_pos[:, :, None]
            ctx.rel_index_g = index[:, None].expand(-1, self.num_heads, -1, -1)
        return ctx

    def forward(
        self,
        hidden: Tensor,
        attention_mask: Tensor | None = None,
        output_hidden_states: bool = False,
        *,
        token_type_ids: Tensor | None = None,
        perm_mask: Tensor | None = None,
        target_mapping: Tensor | None = None,
        mems: list[Tensor] | tuple[Tensor, ...] | None = None,
        content_output: bool = True,
    ) -> TwoStreamOutput:
        """Encode the embedded input ``hidden`` [B, T, H].

        Args:
            attention_mask: [B, T], 1 for tokens and 0 for padding (None: no padding).
            token_type_ids: [B, T] segment ids (relative segment encoding; None: no segment term).
            perm_mask: [B, T, T], 1 where i may NOT attend to j (HF layout; the query stream's
                rule, the content stream additionally sees itself). None: full attention.
            target_mapping: [B, M, T], row m one-hot at the m-th predicted position (or all
                zero: padding). None: no query stream.
            mems: one [B, mlen, H] memory per layer from a previous segment.
            content_output: False when only the query stream's output is read (PLM training):
                the last layer computes the query rows only (its content rows feed nothing; HF
                computes them) and ``last_hidden_state`` is None. Ignored without a
                ``target_mapping`` or with ``output_hidden_states``.
        """
        mlen = mems[0].shape[1] if mems is not None else 0
        ctx = self._context(hidden, attention_mask, token_type_ids, perm_mask, target_mapping, mlen)
        h = hidden
        g = None
        if target_mapping is not None:
            B, M = target_mapping.shape[:2]
            g = self.dropout(self.mask_emb.to(hidden.dtype).expand(B, M, -1))  # (B, M, H)
        states: list[Tensor] = [h] if output_hidden_states else []
        new_mems: list[Tensor] = []
        skip_last = not content_output and g is not None and not output_hidden_states
        for i, layer in enumerate(self.layers):
            if self.mem_len > 0:
                new_mems.append(self._cache(h, None if mems is None else mems[i]))
            content = not (skip_last and i == self.num_layers - 1)
            h, g = layer(h, g, ctx, None if mems is None else mems[i], content)
            if output_hidden_states:
                states.append(h)
        h = None if h is None else self.dropout(h)
        if output_hidden_states:
            states[-1] = h
        return TwoStreamOutput(
            last_hidden_state=h,
            hidden_states=tuple(states),
            query_hidden_state=None if g is None else self.dropout(g),
            mems=tuple(new_mems) if self.mem_len > 0 else None,
        )

    def _cache(self, h: Tensor, mem: Tensor | None) -> Tensor:
        """The last ``mem_len`` states of [memory; this segment], detached (Transformer-XL)."""
        full = h if mem is None else torch.cat([mem, h], dim=1)
        return full[:, -self.mem_len :].detach()
