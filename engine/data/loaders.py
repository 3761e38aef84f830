"""What every loader shares (a seeded order of sample indices per epoch, cut into batches, and
this process's share of them), the loader of in-memory feature vectors (tabular data: no
augmentation) and the evaluation loader of in-memory images (no augmentation either)."""
import numpy as np
import torch

from engine.distributed import Processes


class BatchOrder:
    """Batches of positions `indices` (default: all `count` samples): in order, or with
    shuffle=True in a new permutation per epoch from (seed, epoch), so a resumed run sees the
    same batches.

    processes (engine.distributed.Processes): the share of this process. With shuffle=True
    (training) every process takes its contiguous part of each batch, the global batch
    (`first_row` says where it starts); in order (passes over a split) it takes its contiguous
    part of the samples, in batches of batch_size."""

    def __init__(self, count, batch_size, shuffle=False, seed=0, indices=None, drop_last=False,
                 processes=Processes()):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.indices = np.arange(count) if indices is None else np.asarray(indices, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.processes = processes
        self.epoch = 0

    def __len__(self):
        """This process's number of batches (with shuffle=True, the same on every process)."""
        count = len(self.indices) if self.shuffle else len(self.epoch_order())
        full, rest = divmod(count, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def epoch_order(self):
        if not self.shuffle:
            return self.indices[slice(*self.processes.part(len(self.indices)))]
        return self.indices[np.random.default_rng([self.seed, self.epoch]).permutation(len(self.indices))]

    def batch_part(self, number):
        """(start, stop) of this process's part of (global) training batch `number`, and its rows."""
        rows = min(self.batch_size, len(self.indices) - number * self.batch_size)
        return (*self.processes.part(rows), rows)

    def first_row(self, number):
        """Where this process's part of (global) batch `number` starts in it."""
        return self.batch_part(number)[0] if self.shuffle else 0

    def share(self, number):
        """This process's rows of (global) training batch `number` times the number of processes,
        over the batch's rows: 1 where the batch divides evenly. Each process's mean loss scaled
        by it, DDP's average of the processes' gradients weighs every sample of the batch alike
        (unscaled, a last batch of 3 and 2 rows weighed the 2 rows at 1/4 each, the 3 at 1/6)."""
        start, stop, rows = self.batch_part(number)
        return (stop - start) * self.processes.world / rows

    def batches(self):
        order = self.epoch_order()
        for number in range(len(self)):
            batch = order[number * self.batch_size:(number + 1) * self.batch_size]
            yield batch[slice(*self.processes.part(len(batch)))] if self.shuffle else batch


class TensorLoader(BatchOrder):
    """(features [B, D] float32, indices [B] int64) batches of `features[indices]`, standardized
    with (mean, std); with second_view set, the same features again as the second view (feature
    vectors get no augmentation)."""

    def __init__(self, features, batch_size, mean, std, device="cpu", shuffle=False, seed=0, indices=None,
                 drop_last=False, second_view=None, processes=Processes(), **image_options):
        del image_options  # augment / flip: images only
        super().__init__(len(features), batch_size, shuffle, seed, indices, drop_last, processes)
        standardized = (np.asarray(features, dtype=np.float32) - mean) / std
        self.features = torch.from_numpy(standardized.astype(np.float32)).to(device)
        self.second_view = second_view

    def __iter__(self):
        for batch in self.batches():
            indices = torch.from_numpy(batch)
            features = self.features[indices.to(self.features.device, non_blocking=True)]
            yield (features, indices, features) if self.second_view else (features, indices)


class ImageArrayLoader(BatchOrder):
    """(images [B, C, H, W] float32, indices [B] int64) batches of in-memory uint8 images
    [N, H, W, C] normalized with (mean, std), without augmentation: the evaluation passes (the
    augmented batches go through DALI, engine/data/pipeline.py). Torch gathers and normalizes
    each batch in the caller's thread, on the device (the uint8 batch is what travels to a GPU):
    on the CPU no pipeline thread competes with the model's for the cores. The batches are
    channels_last views (NCHW shape, NHWC memory), the layout the models run in."""

    def __init__(self, images, batch_size, mean, std, device="cpu", shuffle=False, seed=0, indices=None,
                 drop_last=False, processes=Processes(), **image_options):
        del image_options  # flip / num_threads: the augmented loaders'
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        super().__init__(len(images), batch_size, shuffle, seed, indices, drop_last, processes)
        self.images, self.device = images, torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)

    def __iter__(self):
        for batch in self.batches():
            images = torch.from_numpy(self.images[batch]).to(self.device, non_blocking=True)
            yield ((images.float() - self.mean) / self.std).permute(0, 3, 1, 2), torch.from_numpy(batch)
