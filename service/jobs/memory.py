"""Peak memory of a training job, estimated from its sizes before anything is allocated.

`max_params` bounds the weights only; what usually fills memory is what a step keeps for
backprop, which grows with batch_size x bptt and is multiplied by the vocabulary at the
decoder. The estimate counts, in float32:

* the weights, their gradients, the copy of the best epoch's weights the run keeps, and the
  optimiser's state (Adam: two moments; SGD: none);
* then the larger of two moments that never overlap: a training step, with the activations
  autograd keeps for batch x bptt tokens (the embeddings and their dropout, every layer's
  gates and states, and at the decoder the vocab-sized logits, their log-softmax and,
  during backward, their gradient); and a checkpoint, which copies the weights and the
  optimiser's state and then serialises them;
* a fixed allowance for the worker process itself (Python, torch, the corpus tensors).

The per-token factors are calibrated against measured peak RSS of real CPU trainings
(`python -m bench.train_memory`, results in docs/benchmarks/train-memory.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .bounds import estimate_params

FLOAT_BYTES = 4
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Floats kept per token at the decoder, per vocabulary entry: logits, log-softmax and the
# gradient of the logits, plus the temporaries of cross_entropy's backward (calibrated).
LOGIT_COPIES = 4.0
# Floats kept per token and layer, per hidden unit, beyond the gates: the layer's output,
# its cell state (LSTM), the gate pre-activations and the dropout between layers.
LAYER_EXTRA = 4.0
# A checkpoint holds the weights and the optimiser's state twice over: cloned, then serialised.
CHECKPOINT_COPIES = 2
PROCESS_BYTES = 400 << 20  # Python + torch + a corpus: measured ~260 MiB before training


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # weights + gradients + the best epoch's copy + optimiser state
    activations: int  # one step's tensors kept for backprop
    checkpoint: int  # what writing a checkpoint adds, between steps
    process: int

    @property
    def total(self) -> int:
        return self.weights + max(self.activations, self.checkpoint) + self.process

    def describe(self) -> str:
        mib = 1 << 20
        return (
            f"{self.total / mib:.0f} MiB ({self.weights / mib:.0f} MiB weights, gradients and "
            f"optimiser state, {max(self.activations, self.checkpoint) / mib:.0f} MiB for a "
            "step's activations or a checkpoint, "
            f"{self.process / mib:.0f} MiB the process itself)"
        )


def estimate_training_memory(
    arch: str,
    vocab: int,
    embedding: int,
    hidden: int,
    layers: int,
    tied: bool,
    batch_size: int,
    bptt: int,
    optimizer: str = "adam",
    dropout: float = 0.0,
) -> MemoryEstimate:
    """Estimated peak bytes of one training process with these sizes."""
    params = estimate_params(arch, vocab, embedding, hidden, layers, tied)
    moments = 2 if optimizer == "adam" else 0
    tokens = batch_size * bptt
    embed = tokens * embedding * (3 if dropout > 0 else 1)
    per_layer = tokens * hidden * (GATES[arch] + LAYER_EXTRA)
    decoder = tokens * vocab * LOGIT_COPIES
    activations = int(embed + layers * per_layer + decoder) * FLOAT_BYTES
    weights = params * (3 + moments) * FLOAT_BYTES
    checkpoint = params * (1 + moments) * CHECKPOINT_COPIES * FLOAT_BYTES
    return MemoryEstimate(weights, activations, checkpoint, PROCESS_BYTES)
