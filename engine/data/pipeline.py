"""NVIDIA DALI pipelines: batches of augmented, normalized images with their sample indices.

The images stay in memory as one uint8 NHWC array; each epoch a seeded permutation picks the
batches, DALI pads / randomly crops / flips / normalizes them (on the run's GPU on CUDA
machines, on the CPU with device_id=None elsewhere), and the loader yields
(images float32 NCHW, sample indices int64) as torch tensors. Labels are not pushed through
DALI: the caller looks them up by index, so methods can keep per-sample state.

Methods with a consistency term ask for a second view of the same images: "weak" (another
independent crop / flip) or "strong" (RandAugment, 2 ops at magnitude 9 of 30, before the crop
/ flip; the colour op is left out for grayscale images, which it does not support).

Crop positions and flips do not come from DALI's RNG: the loader computes them per sample from a
counter-based hash of (seed, epoch, sample index, view) (sample_uniforms) and feeds them in, so a
sample's crop and flip do not depend on the other samples in its batch, on the batch order or on
which process of a distributed run loads it. The one exception is the strong view's RandAugment:
DALI's pipeline draws its ops (seeded by seed and epoch, a pipeline per epoch), so they depend on
the batch layout; they are still the same in a resumed run.
"""
import warnings

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.auto_aug import rand_augment

from engine.data.loaders import BatchOrder
from engine.distributed import Processes

DECODE_BATCH = 1024
SECOND_VIEWS = (None, "weak", "strong")
RAND_AUGMENT_OPS, RAND_AUGMENT_MAGNITUDE = 2, 9
DRAWS = 3  # uniforms per sample and view: crop x, crop y, flip
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x):
    """splitmix64's step on uint64 arrays (wrapping arithmetic): a bijection whose every output
    bit depends on every input bit."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def sample_uniforms(seed, epoch, indices, views=1):
    """[views, DRAWS, len(indices)] float32 uniforms in [0, 1): each a hash of (seed, epoch,
    view, draw, sample index) and of nothing else."""
    key = np.zeros((views, DRAWS, len(indices)), np.uint64)
    for part in (seed, epoch, np.arange(views)[:, None, None], np.arange(DRAWS)[:, None], np.asarray(indices)):
        key = _mix(key ^ np.asarray(part, dtype=np.int64).astype(np.uint64))
    return (key >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)  # top 24 bits: exact in float32


def dali_device_id(device):
    """DALI's device_id for a torch device: its GPU for CUDA (under torchrun, the local rank's),
    None (CPU-only pipeline) otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.current_device() if device.index is None else device.index


def _crop_flip_normalize(images, number, height, width, pad, flip, random_crop, mean, std):
    # Crop positions and flips of view `number` are fed per sample by the loader (_feed_draws).
    if random_crop:
        # Zero-pad by `pad` on every side (a centered crop larger than the image), then a
        # random crop back to the original size.
        images = fn.crop(images, crop=(height + 2 * pad, width + 2 * pad), out_of_bounds_policy="pad", fill_values=0)
        crop_x = fn.external_source(name=f"crop_x{number}", dtype=types.FLOAT)
        crop_y = fn.external_source(name=f"crop_y{number}", dtype=types.FLOAT)
    else:
        crop_x = crop_y = 0.5
    mirror = fn.external_source(name=f"mirror{number}", dtype=types.INT32) if flip else 0
    return fn.crop_mirror_normalize(images, crop=(height, width), crop_pos_x=crop_x, crop_pos_y=crop_y, mirror=mirror,
                                    mean=list(mean), std=list(std), dtype=types.FLOAT, output_layout="CHW")


@pipeline_def(enable_conditionals=True)  # RandAugment picks its ops with DALI conditionals
def _augment_pipeline(view, second_view, channels, gpu):
    images = fn.external_source(name="images", layout="HWC", dtype=types.UINT8)
    if gpu:
        images = images.gpu()
    first = _crop_flip_normalize(images, 0, **view)
    if second_view is None:
        return first
    if second_view == "strong":
        images = rand_augment.rand_augment(images, n=RAND_AUGMENT_OPS, m=RAND_AUGMENT_MAGNITUDE,
                                           excluded=["color"] if channels == 1 else None)
    return first, _crop_flip_normalize(images, 1, **view)


class DaliLoader(BatchOrder):
    """Iterates over (images [B, C, H, W] float32, indices [B] int64) of `images[subset]`, or
    (images, indices, second view of the same images) when second_view is "weak" or "strong".

    shuffle: a new permutation per epoch from (seed, epoch), so a resumed run sees the same
    batches. augment: random crop with zero padding (pad = H // 8) and, if `flip`, horizontal
    flips, drawn per sample from (seed, epoch, index, view); otherwise only normalization
    (evaluation).
    """

    def __init__(self, images, batch_size, mean, std, device="cpu", shuffle=False, augment=False, flip=False,
                 seed=0, indices=None, drop_last=False, num_threads=2, second_view=None, processes=Processes()):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        if second_view not in SECOND_VIEWS:
            raise ValueError(f"second_view must be one of {SECOND_VIEWS}, got {second_view!r}")
        super().__init__(len(images), batch_size, shuffle, seed, indices, drop_last, processes)
        self.images = images
        self.device = torch.device(device)
        height, width = images.shape[1:3]
        device_id = dali_device_id(self.device)
        view = dict(height=height, width=width, pad=max(1, height // 8), flip=augment and flip, random_crop=augment,
                    mean=mean, std=std)
        self._pipeline_args = dict(
            view=view, second_view=second_view, channels=images.shape[3], gpu=device_id is not None,
            batch_size=batch_size, num_threads=num_threads, device_id=device_id,
            prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        self._views = (1 + (second_view is not None)) if augment else 0  # views fed crop / flip draws
        self._pipe = None

    def __iter__(self):
        # Crops and flips are fed in, so one pipeline serves every epoch; RandAugment draws from
        # the pipeline's RNG, hence a pipeline per epoch seeded by (seed, epoch): the epoch does
        # not depend on the epochs before it, so a resumed run repeats an uninterrupted one.
        if self._pipe is None or self._pipeline_args["second_view"] == "strong":
            self._pipe = self._build((self.seed * 1_000_003 + self.epoch) % (2**31 - 1))
        pipe = self._pipe
        for batch in self.batches():
            pipe.feed_input("images", self.images[batch])
            self._feed_draws(pipe, batch)
            first, *second = (_to_torch(out, self.device) for out in pipe.run())
            yield first, torch.from_numpy(batch), *second

    def _feed_draws(self, pipe, batch):
        for view, (crop_x, crop_y, flip) in enumerate(sample_uniforms(self.seed, self.epoch, batch, self._views)):
            pipe.feed_input(f"crop_x{view}", crop_x)
            pipe.feed_input(f"crop_y{view}", crop_y)
            if self._pipeline_args["view"]["flip"]:
                pipe.feed_input(f"mirror{view}", (flip < 0.5).astype(np.int32))

    def _build(self, seed):
        # DALI's own RandAugment calls operators that DALI has deprecated (fn.experimental.*)
        # and forces those warnings on at every build: record them, pass on any others.
        with warnings.catch_warnings(record=True) as caught:
            pipe = _augment_pipeline(seed=seed, **self._pipeline_args)
            pipe.build()
        for warning in caught:
            if "fn.experimental." not in str(warning.message):
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return pipe


def _to_torch(tensor_list, device):
    if device.type == "cuda":
        out = torch.empty(tensor_list.as_tensor().shape(), dtype=torch.float32, device=device)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        feed_ndarray(tensor_list.as_tensor(), out, cuda_stream=torch.cuda.current_stream())
        return out
    return torch.from_numpy(np.array(tensor_list.as_tensor()))


@pipeline_def
def _decode_pipeline(size, channels):
    images = fn.decoders.image(fn.external_source(name="encoded", dtype=types.UINT8), device="cpu",
                               output_type=types.RGB if channels == 3 else types.GRAY)
    if size:
        images = fn.resize(images, resize_x=size, resize_y=size, dtype=types.UINT8)
    return images


def decode_images(encoded, size=None, channels=3, names=None):
    """Decodes a list of encoded images (JPEG/PNG/... bytes as uint8 arrays) to uint8 NHWC,
    resized to size x size when given (needed when the images differ in size). An image that
    does not decode raises a ValueError naming it by names[i] (else by its index)."""
    pipe = _decode_pipe(size, channels, DECODE_BATCH)
    parts = []
    for start in range(0, len(encoded), DECODE_BATCH):
        chunk = encoded[start:start + DECODE_BATCH]
        try:
            parts.append(_decode_batch(pipe, chunk))
        except RuntimeError:
            # DALI names neither the file nor, always, the sample, and its pipeline is unusable
            # after a failure: decode this batch one image at a time on a fresh one to find it.
            bad = _first_undecodable(chunk, size, channels)
            if bad is None:
                raise
            name = names[start + bad] if names is not None else f"image #{start + bad}"
            raise ValueError(f"{name}: not a decodable image (empty, truncated or corrupt)") from None
    return np.concatenate(parts)


def _decode_pipe(size, channels, batch_size):
    pipe = _decode_pipeline(size=size, channels=channels, batch_size=batch_size, num_threads=2, device_id=None,
                            prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
    pipe.build()
    return pipe


def _decode_batch(pipe, encoded):
    pipe.feed_input("encoded", encoded)
    (out,) = pipe.run()
    return np.stack([np.array(out.at(i)) for i in range(len(out))])


def _first_undecodable(encoded, size, channels):
    """The index of the first image in `encoded` that fails to decode alone, or None."""
    pipe = _decode_pipe(size, channels, 1)
    for i, blob in enumerate(encoded):
        try:
            _decode_batch(pipe, [blob])
        except RuntimeError:
            return i
    return None
