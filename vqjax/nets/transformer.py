"""Transformers over VQ code maps: the causal GPT of taming-transformers and the bidirectional
MaskGIT transformer (Chang et al. 2022), in one module.

Both read a code map flattened in raster order, `tokens [B, L]`, and a class label per
example, and return logits `[B, L, vocab_size]` aligned with the tokens: `logits[:, i]` is the
model's distribution of `tokens[:, i]`.
  - causal=True (GPT): the sequence is [condition, t_0, ..., t_{L-2}] under a causal mask, so
    `logits[:, i]` depends on the condition and t_<i only (taming's SOS / class token as the
    first position, the target shifted by one).
  - causal=False (MaskGIT): the sequence is [condition, t_0, ..., t_{L-1}] with full attention;
    masked positions hold `mask_token = vocab_size`.
The condition is a learned embedding of the class label; label `num_classes` is the null
condition (the unconditional model's start token, and the dropped condition of classifier-free
guidance), so an unconditional model is the `num_classes=0` case.

Blocks are pre-LayerNorm (GPT-2 / minGPT: LN -> attention -> residual, LN -> MLP -> residual,
final LN), weights initialised N(0, 0.02) as in minGPT and BERT. MaskGIT's reference uses
post-LN BERT blocks; pre-LN trains the same sizes without its warm-up sensitivity.

`decode_step` runs the causal model one position at a time with a key/value cache (the flax
'cache' collection): sampling costs O(L) per token instead of O(L^2).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_init = nn.initializers.normal(stddev=0.02)


class SelfAttention(nn.Module):
    """Multi-head self-attention; with `cache_position` it attends over a key/value cache."""

    num_heads: int
    max_len: int
    causal: bool
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, cache_position=None) -> jax.Array:
        batch, length, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"The embedding width {width} is not divisible by {self.num_heads} heads.")
        head_dim = width // self.num_heads
        qkv = nn.DenseGeneral((3, self.num_heads, head_dim), kernel_init=_init, dtype=self.dtype, name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, Dh]
        query_positions = jnp.arange(length)
        if cache_position is not None:
            cached_k = self.variable("cache", "key", jnp.zeros, (batch, self.max_len, self.num_heads, head_dim), k.dtype)
            cached_v = self.variable("cache", "value", jnp.zeros, (batch, self.max_len, self.num_heads, head_dim), v.dtype)
            start = (0, cache_position, 0, 0)
            cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, start)
            cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, start)
            k, v = cached_k.value, cached_v.value
            query_positions = query_positions + cache_position
        key_positions = jnp.arange(k.shape[1])
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim ** -0.5
        if self.causal or cache_position is not None:
            # With a cache, positions not written yet are zeros: the causal mask hides them.
            allowed = key_positions[None, :] <= query_positions[:, None]
            logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
        # Softmax in float32: bf16 logits over hundreds of positions lose the small weights.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(width, axis=(-2, -1), kernel_init=_init, dtype=self.dtype, name="out")(out)


class Block(nn.Module):
    num_heads: int
    mlp_dim: int
    max_len: int
    causal: bool
    dropout: float = 0.0
    attn_dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, cache_position=None) -> jax.Array:
        h = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x)
        h = SelfAttention(self.num_heads, self.max_len, self.causal, self.attn_dropout, self.dtype,
                          name="attn")(h, train=train, cache_position=cache_position)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
        h = nn.Dense(self.mlp_dim, kernel_init=_init, dtype=self.dtype, name="mlp_in")(h)
        h = nn.Dense(x.shape[-1], kernel_init=_init, dtype=self.dtype, name="mlp_out")(nn.gelu(h))
        return x + nn.Dropout(self.dropout, deterministic=not train)(h)


class Transformer(nn.Module):
    """GPT (`causal=True`) or MaskGIT (`causal=False`) prior over `seq_len` code indices.

    Attributes:
      vocab_size: number of codes K; MaskGIT's mask token is index K.
      seq_len: code-map positions (h * w).
      num_classes: class labels 0..num_classes-1; label num_classes is the null condition.
      num_layers, num_heads, embed_dim, mlp_dim: the sizes.
      dropout: on embeddings and residual branches; attn_dropout: on attention weights.
    """

    vocab_size: int
    seq_len: int
    causal: bool = True
    num_classes: int = 0
    num_layers: int = 12
    num_heads: int = 8
    embed_dim: int = 512
    mlp_dim: int = 2048
    dropout: float = 0.0
    attn_dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @property
    def mask_token(self) -> int:
        return self.vocab_size

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def max_len(self) -> int:
        """Sequence length inside the model: the condition plus the (shifted) tokens."""
        return self.seq_len + (0 if self.causal else 1)

    def setup(self):
        self.token_embed = nn.Embed(self.vocab_size + (0 if self.causal else 1), self.embed_dim,
                                    embedding_init=_init, name="token_embed")
        self.class_embed = nn.Embed(self.num_classes + 1, self.embed_dim, embedding_init=_init,
                                    name="class_embed")
        self.position_embed = self.param("position_embed", _init, (self.max_len, self.embed_dim))
        self.embed_dropout = nn.Dropout(self.dropout)
        self.blocks = [Block(self.num_heads, self.mlp_dim, self.max_len, self.causal, self.dropout,
                             self.attn_dropout, self.dtype, name=f"block_{i}") for i in range(self.num_layers)]
        self.ln_final = nn.LayerNorm(dtype=self.dtype, name="ln_final")
        self.head = nn.Dense(self.vocab_size, kernel_init=_init, dtype=self.dtype, name="head")

    def _check(self, tokens: jax.Array, labels: jax.Array) -> None:
        if tokens.ndim != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"Tokens have shape {tokens.shape}; this model takes [batch, {self.seq_len}] "
                             "(code maps flattened in raster order).")
        if labels.shape != tokens.shape[:1]:
            raise ValueError(f"Labels have shape {labels.shape}; pass one label per sequence, "
                             f"shape ({tokens.shape[0]},) (label {self.null_label} = no condition).")

    def _logits(self, x: jax.Array) -> jax.Array:
        return self.head(self.ln_final(x)).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, labels: jax.Array, *, train: bool = False) -> jax.Array:
        """tokens [B, L] ints, labels [B] ints -> logits [B, L, vocab_size] (float32)."""
        self._check(tokens, labels)
        condition = self.class_embed(labels)[:, None]
        body = tokens[:, :-1] if self.causal else tokens
        x = jnp.concatenate([condition, self.token_embed(body)], axis=1) + self.position_embed
        x = self.embed_dropout(x.astype(self.dtype), deterministic=not train)
        for block in self.blocks:
            x = block(x, train=train)
        logits = self._logits(x)
        return logits if self.causal else logits[:, 1:]

    def decode_step(self, previous_tokens: jax.Array, labels: jax.Array, position) -> jax.Array:
        """One causal step with the key/value cache (apply with mutable=['cache']).

        Position 0 embeds the condition (`previous_tokens` ignored); position i > 0 embeds
        token i-1. Returns logits [B, vocab_size] of token `position`. Call positions in order
        0, 1, ... : the cache is created, zero-filled, by the call at position 0.
        """
        if not self.causal:
            raise ValueError("decode_step is for the causal (GPT) model; MaskGIT decodes with "
                             "vqjax.sampling.sample_maskgit.")
        token = self.token_embed(previous_tokens)
        x = jnp.where(position == 0, self.class_embed(labels), token)[:, None]
        x = x + jax.lax.dynamic_slice_in_dim(self.position_embed, position, 1)[None]
        x = x.astype(self.dtype)
        for block in self.blocks:
            x = block(x, cache_position=position)
        return self._logits(x)[:, 0]
