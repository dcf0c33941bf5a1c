"""JointsMSELoss (the reference core/loss.py), with online hard keypoint mining as an option."""

from __future__ import annotations

import torch


def joints_mse_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, ohkm_topk: int = 0
) -> torch.Tensor:
    """0.5 * MSE(pred * w, target * w) averaged over joints (each joint's MSE is a mean over
    batch and pixels). With `ohkm_topk` > 0: per sample, the mean of its top-k joint losses,
    averaged over the batch (JointsOHKMMSELoss)."""
    per_joint = 0.5 * ((pred.float() - target) * weight[..., None, None]).pow(2).flatten(2).mean(-1)
    if ohkm_topk <= 0:
        return per_joint.mean()
    k = min(ohkm_topk, per_joint.shape[1])
    return per_joint.topk(k, dim=1).values.mean()
