"""JointsMSELoss and its hard-keypoint mining (pose/engine/loss.py) against the reference."""

import torch

from pose.engine.loss import joints_mse_loss


def test_joints_mse_loss_matches_the_reference():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 17, 8, 6), torch.rand(3, 17, 8, 6)
    weight = (torch.rand(3, 17) > 0.3).float()
    mse = torch.nn.MSELoss()
    reference = (
        sum(
            0.5
            * mse(pred[:, j] * weight[:, j, None, None], target[:, j] * weight[:, j, None, None])
            for j in range(17)
        )
        / 17
    )
    torch.testing.assert_close(joints_mse_loss(pred, target, weight), reference)
    per = 0.5 * ((pred - target) * weight[..., None, None]).pow(2).mean((2, 3))
    ohkm = torch.stack([per[i].topk(8).values.sum() / 8 for i in range(3)]).mean()
    torch.testing.assert_close(joints_mse_loss(pred, target, weight, ohkm_topk=8), ohkm)
