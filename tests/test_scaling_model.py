"""The scaling model of benchmarks/scaling.py: its formulas on values worked by hand."""

import itertools

import pytest

from benchmarks import scaling


def test_ring_allreduce_moves_two_w_minus_one_over_w_of_the_buffer():
    # 100 MB over 4 ranks at 10 GB/s: 2 * 3/4 * 0.01 s = 15 ms, plus 6 hops of 1 ms
    assert scaling.ring_allreduce_s(100e6, 4, 10e9, 1e-3) == pytest.approx(0.015 + 0.006)
    assert scaling.ring_allreduce_s(100e6, 1, 10e9, 1e-3) == 0.0


def test_ring_latency_is_infiniband_only_on_the_steps_that_cross_nodes():
    # 16 ranks on 2 nodes: 30 steps, 2 crossing at 5 ms, 28 at 1 ms; 2 * 15/16 * 10 ms moved
    got = scaling.ring_allreduce_s(100e6, 16, 10e9, 1e-3, crossing_steps=2, crossing_hop_s=5e-3)
    assert got == pytest.approx(0.01875 + 0.028 + 0.010)


def test_the_tree_pays_log2_of_the_nodes_in_latency():
    hops = {"nvlink": 1e-3, "ib": 5e-3}
    # 4 nodes of 8: 2 x (2 InfiniBand levels + a chain of 7 NVLink hops), 2 x 10 ms moved
    assert scaling.tree_allreduce_s(100e6, 4, 8, 10e9, hops) == pytest.approx(0.02 + 0.034)
    cluster = scaling.Cluster()
    assert cluster.allreduce_s(64e3, 512)[1] == "tree"  # small: latency decides
    assert cluster.allreduce_s(2e9, 16)[1] == "ring"  # large, few nodes: the ring's 2(W-1)/W
    one_node, _ = cluster.allreduce_s(136e6, 8)
    assert one_node == pytest.approx(2 * 7 / 8 * 136e6 / 300e9 + 14 * 3e-6)
    # across nodes the eight rails together (8 x 50 GB/s x 0.8) outrun NVLink's bus: NVLink's
    two_nodes, _ = cluster.allreduce_s(136e6, 16)
    assert two_nodes == pytest.approx(2 * 15 / 16 * 136e6 / 300e9 + 28 * 3e-6 + 2 * 8e-6)


def test_buckets_hide_their_reduction_behind_the_backward_pass_except_the_last():
    # 100 bytes in buckets of 25, ready at 2.5, 5, 7.5 and 10 ms of a 10 ms backward pass
    fast = lambda size: size * 1e-4  # noqa: E731  (2.5 ms a bucket)
    slow = lambda size: size * 1.6e-4  # noqa: E731  (4 ms a bucket)
    assert scaling.exposed_reduction_s(0.010, 100, 25, fast, True) == pytest.approx(0.0025)
    # each bucket waits for the previous: done at 6.5, 10.5, 14.5, 18.5 ms
    assert scaling.exposed_reduction_s(0.010, 100, 25, slow, True) == pytest.approx(0.0085)
    assert scaling.exposed_reduction_s(0.010, 100, 25, fast, False) == pytest.approx(0.010)
    assert scaling.exposed_reduction_s(0.010, 10, 25, fast, True) == pytest.approx(0.001)


def test_the_large_scale_tables_follow_the_counts_and_nvidias_single_node_point():
    report = scaling.model_table(bytes_per_image=60e3)
    cluster = scaling.Cluster()
    anchor = scaling.Cluster(nvlink_bus=200e9)  # A100's NVLink 3: 2/3 of the bus rate
    (row,) = scaling.large_scale(2470, 256, 25.557e6 * 4, 0, anchor, report["overhead"], (8,))
    assert row["efficiency"] == pytest.approx(16621 / (8 * 2470))  # NVIDIA's measured 0.84
    resnet = report["models"]["Simple Baselines R-50"]
    # both costs from the project's one multiply-add count (pose.models.summary)
    assert resnet["pose_gmacs"] == pytest.approx(5.426, abs=0.001)
    assert resnet["resnet50_224_gmacs"] == pytest.approx(4.089, abs=0.001)
    vit_h = report["models"]["ViTPose-H"]
    assert vit_h["pose_params"] == pytest.approx(637.21e6, rel=1e-3)
    assert vit_h["per_gpu_images_s"] == pytest.approx(
        resnet["per_gpu_images_s"] * resnet["pose_gmacs"] / vit_h["pose_gmacs"]
    )
    for table in report["models"].values():
        rows, real = table["rows"], table["rows_with_overhead"]
        assert [r["gpus"] for r in rows] == [8, 16, 32, 64, 128, 256, 512]
        compute_ms = table["batch_per_gpu"] / table["per_gpu_images_s"] * 1e3
        for plain, with_overhead in zip(rows, real, strict=True):
            exposed = plain["exposed_ms"]
            assert plain["efficiency"] == pytest.approx(compute_ms / (compute_ms + exposed))
            assert with_overhead["efficiency"] == pytest.approx(
                compute_ms / (compute_ms * (1 + report["overhead"]) + exposed)
            )
            assert plain["efficiency_no_overlap"] < plain["efficiency"]
            assert plain["read_mb_s"] == pytest.approx(plain["images_s"] * 60e3 / 1e6)
        # the reduction hides: what shows is the last bucket's, far below the whole one's
        assert all(r["exposed_ms"] < r["allreduce_ms"] / 4 for r in rows[1:])
        assert all(a["efficiency"] >= b["efficiency"] for a, b in itertools.pairwise(rows))
    assert cluster.gpus_per_node == 8
