"""Training batches from several datasets (`data.datasets`), each batch of one dataset, its
keypoints placed at the union's joints (pose/data/union.py).

An epoch is as many batches as the datasets' epochs together. `data.mix: by_size` gives each
dataset its own number of batches (every sample once an epoch); `weights` shares the same total
out in proportion to the datasets' `weight`s (largest remainders), so a heavier dataset is read
more than once an epoch and a lighter one in part. Which dataset each batch of epoch e comes
from is a permutation drawn from (seed, e), the same on every rank, so all ranks train the same
dataset at each micro-batch. Each dataset's loader runs through its own epochs in turn: after
mixed epoch e, dataset d has given e x count_d batches, and the position of every dataset at
any batch follows from the seed and the step, which is what exact resume needs.

Each batch carries, beside what the backends give: `keypoints` (N, U, 3) over the union's U
joints (zeros where the dataset has none), `known` (N, U) bool, the joints its dataset
annotates (the others weigh 0 in the loss: unknown, not invisible), and `dataset` (N,) int64,
its index in data.datasets (which head, with model.heads=per_dataset)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pose.data.loader import Loader, epoch_seed
from pose.data.union import UnionLayout


def batch_counts(sizes: list[int], weights: list[float], mix: str) -> np.ndarray:
    """Batches of each dataset in one mixed epoch of sum(sizes) batches."""
    sizes_array = np.asarray(sizes, dtype=np.int64)
    if mix == "by_size":
        return sizes_array
    total = int(sizes_array.sum())
    shares = np.asarray(weights, dtype=np.float64) / float(np.sum(weights)) * total
    counts = np.floor(shares).astype(np.int64)
    remainders = shares - counts
    for i in np.argsort(-remainders, kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    return counts


class MixedLoader(Loader):
    """The datasets' training loaders (`loaders`, in data.datasets' order) as one."""

    def __init__(
        self,
        loaders: list[Loader],
        union: UnionLayout,
        mix: str = "by_size",
        weights: list[float] | None = None,
        seed: int = 0,
    ):
        # not Loader.__init__: the shards are the datasets' loaders' own
        self.loaders, self.union, self.seed = loaders, union, seed
        self.spec = loaders[0].spec
        self.layout = union.layout
        sizes = [loader.batches_per_epoch for loader in loaders]
        self.counts = batch_counts(sizes, weights or [1.0] * len(loaders), mix)
        self.batches_per_epoch = int(self.counts.sum())
        device = self.spec.device
        self._channels = [torch.as_tensor(p.channels, device=device) for p in union.parts]
        self._known = [torch.as_tensor(union.known(d), device=device) for d in range(len(loaders))]

    @property
    def folders(self) -> list[Path]:
        return [folder for loader in self.loaders for folder in loader.folders]

    @property
    def samples_read(self) -> int:
        return sum(loader.samples_read for loader in self.loaders)

    @property
    def bad_samples(self) -> int:
        return sum(loader.bad_samples for loader in self.loaders)

    @property
    def bad_sample_names(self) -> list[str]:
        return [name for loader in self.loaders for name in loader.bad_sample_names]

    def order(self, epoch: int) -> np.ndarray:
        """The dataset of each batch of `epoch` (the same on every rank)."""
        datasets = np.repeat(np.arange(len(self.loaders)), self.counts)
        return np.random.default_rng(epoch_seed(self.seed, epoch)).permutation(datasets)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        order = self.order(epoch)
        streams: dict[int, Iterator[dict]] = {}
        try:
            for batch in range(start_batch, len(order)):
                d = int(order[batch])
                if d not in streams:
                    given = epoch * int(self.counts[d]) + int(np.count_nonzero(order[:batch] == d))
                    streams[d] = self._stream(d, given)
                yield self._in_union(next(streams[d]), d)
        finally:
            for stream in streams.values():
                stream.close()

    def _stream(self, d: int, given: int) -> Iterator[dict]:
        """Dataset d's batches after the first `given` of its run of epochs."""
        loader = self.loaders[d]
        own_epoch, within = divmod(given, loader.batches_per_epoch)
        while True:
            yield from loader.epoch(own_epoch, within)
            own_epoch, within = own_epoch + 1, 0

    def _in_union(self, batch: dict, d: int) -> dict:
        keypoints = batch["keypoints"]
        n = keypoints.shape[0]
        union = keypoints.new_zeros((n, self.layout.num_joints, keypoints.shape[2]))
        union[:, self._channels[d]] = keypoints
        batch["keypoints"] = union
        batch["known"] = self._known[d].expand(n, -1)
        batch["dataset"] = torch.full((n,), d, dtype=torch.int64, device=keypoints.device)
        return batch
