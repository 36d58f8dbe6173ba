"""What a model pass costs: floating-point operations counted from a model's shape.

Used by the benchmarks (model FLOP utilisation: useful FLOPs over the measured matmul
rate) and by ``calibtune run --dry-run`` (estimates before anything loads). Only the work a
pass needs is counted: each token once (a shared prompt once, however many options
follow it), attention over the tokens each one attends to, and the language-model head
only where a token is predicted. A multiply-add is two FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# LM-head rows computed at once (``forward.token_logprobs``); the dry run counts one chunk's fp32 logits in memory
# (Gemma's 262k-word head: 256 MiB). Larger chunks, and a log-softmax copy of each, made Gemma's cloze pass 2x
# slower once the process had trained adapters (measured).
HEAD_CHUNK = 256
# Tokens per forward pass, padding included. On a 2-core CPU 1,024 beat 4,096 for both bundled models: less
# padding in batches of closer lengths, and activations small enough that the elementwise ops (norms, rotary,
# SiLU) run 7-10x faster per element: SmolLM2's feature pass over 400 texts took 9.4 s instead of 17.0 s in a
# torch profile (README, "Performance").
DEFAULT_TOKEN_BUDGET = 1024


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide a decoder's cost."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool = True  # Llama, Mistral, Gemma, Qwen: gate, up and down projections

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """The shape of a transformers config, or of a ``config.json`` read as a dict (the text part of a
        multimodal one)."""
        if isinstance(config, dict):
            values = config.get("text_config", config)
        else:
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            values = text.to_dict() if hasattr(text, "to_dict") else vars(text)
        heads = int(values["num_attention_heads"])
        hidden = int(values["hidden_size"])
        head_dim = int(values.get("head_dim") or hidden // heads)
        intermediate = int(values.get("intermediate_size") or 4 * hidden)
        gated = values.get("model_type", "") not in ("gpt2", "gpt_neox", "opt", "falcon", "phi")
        return cls(layers=int(values["num_hidden_layers"]), hidden=hidden, intermediate=intermediate, heads=heads,
                   kv_heads=int(values.get("num_key_value_heads") or heads), head_dim=head_dim,
                   vocab=int(values["vocab_size"]), gated_mlp=gated)

    @property
    def layer_weights(self) -> int:
        """Weights of one block's matrices (attention projections and MLP)."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.intermediate
        return attention + mlp

    @property
    def block_weights(self) -> int:
        """Weights of every block (the embedding and the head excluded)."""
        return self.layers * self.layer_weights

    def token_flops(self, attended: float, layers: int | None = None) -> float:
        """Forward FLOPs of one token through ``layers`` blocks (all by default), attending to ``attended`` tokens."""
        n = self.layers if layers is None else layers
        return n * (2 * self.layer_weights + 4 * self.heads * self.head_dim * attended)

    @property
    def head_flops(self) -> float:
        """Forward FLOPs of the language-model head at one position."""
        return 2 * self.hidden * self.vocab


def sequence_flops(shape: ModelShape, length: int, layers: int | None = None) -> float:
    """Forward FLOPs of one causal sequence (token t attends to t + 1 tokens), the head excluded."""
    mean_attended = (length + 1) / 2
    return length * shape.token_flops(mean_attended, layers)


def tree_flops(shape: ModelShape, context: int, branches: list[int], predicted: int | None = None,
               layers: int | None = None) -> float:
    """Forward FLOPs of a context read once and branches that each continue it, plus the head at
    ``predicted`` positions (by default one per branch token)."""
    total = sequence_flops(shape, context, layers)
    for m in branches:  # branch token k attends to the context and k + 1 branch tokens
        total += m * shape.token_flops(context + (m + 1) / 2, layers)
    n_predicted = sum(branches) if predicted is None else predicted
    return total + n_predicted * shape.head_flops


def training_flops(forward: float) -> float:
    """Forward and backward FLOPs of a step on frozen weights with adapters: the backward pass computes the
    gradients of the activations (as many FLOPs as the forward pass) and the adapters' own (negligible)."""
    return 2 * forward
