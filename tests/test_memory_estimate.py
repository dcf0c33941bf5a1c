"""The training-memory estimate of benchmarks/memory_estimate.py on values worked by hand."""

import pytest

from benchmarks import memory_estimate as memory


def test_zero_partitions_moments_then_gradients_then_weights():
    # 1,000 parameters over 8 ranks: 4 kB weights, 4 kB gradients, 8 kB Adam moments
    assert memory.model_state_bytes(1000, 0, 8) == 16_000
    assert memory.model_state_bytes(1000, 1, 8) == 4_000 + 4_000 + 1_000
    assert memory.model_state_bytes(1000, 2, 8) == 4_000 + 500 + 1_000
    assert memory.model_state_bytes(1000, 3, 8) == 2_000


def test_saved_activations_grow_with_the_batch_and_checkpointing_keeps_block_inputs():
    from pose.config import ModelConfig

    cfg = ModelConfig(backbone="vitpose_s", deconv_layers=2)
    two = memory.saved_activation_bytes(cfg, 2, False)
    four = memory.saved_activation_bytes(cfg, 4, False)
    assert four == pytest.approx(2 * two, rel=0.05)
    kept = memory.saved_activation_bytes(cfg, 2, True)
    # each of the 12 blocks keeps its (2, 192, 384) fp32 input, and the decoder its own
    block_inputs = 12 * 2 * 192 * 384 * 4
    assert block_inputs < kept < two / 4
