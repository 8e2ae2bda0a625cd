"""How hard each pre-training loss pulls on the shared encoder: the norm of the gradient each
``<name>_loss`` alone sends into the encoder's parameters (embeddings + transformer), the
measurement the loss weights are chosen from."""

from __future__ import annotations

import torch

from kaleido.pretrain.task import PretrainTask


def loss_gradient_norms(task: PretrainTask, batch: dict) -> dict[str, dict[str, float]]:
    """Per loss: its value, and the L2 norm of its unweighted and weighted gradient on the encoder.

    Args:
        task: the pre-training task (train mode; its parameters' ``.grad`` are left untouched).
        batch: one collated batch.

    Returns:
        ``{head: {"loss", "grad_norm", "weighted_grad_norm"}}``.
    """
    shared = [p for n, p in task.model.named_parameters() if p.requires_grad and not n.startswith("pooler.")]
    out = task(batch)
    result = {}
    names = list(task.heads)
    for k, name in enumerate(names):
        loss = out[f"{name}_loss"]
        grads = torch.autograd.grad(loss, shared, retain_graph=k < len(names) - 1, allow_unused=True)
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None) + 0.0)
        w = task.loss_weights[name]
        result[name] = {"loss": float(loss.detach()), "grad_norm": float(norm), "weighted_grad_norm": float(w * norm)}
    return result
