"""NVIDIA DALI pipelines: batches of augmented, normalized images with their sample indices.

The images stay in memory as one uint8 NHWC array; each epoch a seeded permutation picks the
batches, the loader zero-pads them (DALI does, for a strong view's RandAugment) and DALI
randomly crops / flips / normalizes them (on the run's GPU on CUDA machines, on the CPU with
device_id=None elsewhere), and the loader yields
(images float32 NCHW, sample indices int64) as torch tensors. Labels are not pushed through
DALI: the caller looks them up by index, so methods can keep per-sample state.

Methods with a consistency term ask for a second view of the same images: "weak" (another
independent crop / flip) or "strong" (RandAugment, 2 ops at magnitude 9 of 30, before the crop
/ flip; the colour op is left out for grayscale images, which it does not support).

Nothing random comes from DALI's RNG: the loader computes crop positions, flips and
RandAugment's op choices and signs per sample from a counter-based hash of (seed, epoch, sample
index, view) (sample_uniforms) and feeds them in, so a sample's augmentation does not depend on
the other samples in its batch, on the batch order, on which process of a distributed run loads
it or on the epochs before, and one pipeline serves every epoch.

Pipelines run PREFETCH batches ahead (exec_pipelined, exec_async): DALI pulls the next batches'
inputs from the loader's callback and prepares them while the caller trains on this one.
"""
import functools
import warnings
from collections import deque

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.auto_aug import rand_augment
from nvidia.dali.auto_aug.core import select, signed_bin

from engine.data.datasets import DataFileError, pillow_format
from engine.data.loaders import BatchOrder
from engine.distributed import Processes

DECODE_BATCH = 1024  # the most images decoded at once (pixel_chunks)
# and the most pixels of them at full size, as DALI decodes an image before it resizes or crops it:
# 96 MiB as RGB (two 12 MP photos), however many images there are
DECODE_PIXELS = 2**25
PREFETCH = 2  # runs (batches, or a batch's pieces) a pipeline prepares ahead of the one the caller trains on
SECOND_VIEWS = (None, "weak", "strong")
RAND_AUGMENT_OPS, RAND_AUGMENT_MAGNITUDE, RAND_AUGMENT_BINS = 2, 9, 31  # DALI's RandAugment defaults: bins 0..30
RAND_AUGMENT_DRAWS = 2 * RAND_AUGMENT_OPS  # uniforms per sample of a strong view: each op's choice and sign
RAND_AUGMENT_VIEW = 2  # sample_uniforms' view coordinate of those draws (0 and 1: the views' crops)
DRAWS = 3  # uniforms per sample and view: crop x, crop y, flip
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x):
    """splitmix64's step on uint64 arrays (wrapping arithmetic): a bijection whose every output
    bit depends on every input bit."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def sample_uniforms(seed, epoch, indices, views=1, draws=DRAWS, first_view=0):
    """[views, draws, len(indices)] float32 uniforms in [0, 1): each a hash of (seed, epoch,
    view (from first_view on), draw, sample index) and of nothing else."""
    key = np.zeros((views, draws, len(indices)), np.uint64)
    view = np.arange(first_view, first_view + views)[:, None, None]
    for part in (seed, epoch, view, np.arange(draws)[:, None], np.asarray(indices)):
        key = _mix(key ^ np.asarray(part, dtype=np.int64).astype(np.uint64))
    return (key >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)  # top 24 bits: exact in float32


def rand_augment_suite(channels):
    """DALI's RandAugment operations (RandAugment, arXiv:1909.13719), without the colour one for
    grayscale images, which it does not support."""
    return [op for op in rand_augment.get_rand_augment_suite() if channels == 3 or op.name != "color"]


def rand_augment_choices(seed, epoch, indices, count):
    """[op, sign] * RAND_AUGMENT_OPS int32 arrays [B]: for each op a strong view applies in turn,
    which of the `count` ops of the suite and whether its magnitude is negated, per sample."""
    uniforms = sample_uniforms(seed, epoch, indices, 1, RAND_AUGMENT_DRAWS, RAND_AUGMENT_VIEW)[0]
    ops = np.minimum((uniforms[0::2] * count).astype(np.int32), count - 1)
    signs = (uniforms[1::2] < 0.5).astype(np.int32)
    return [part for op, sign in zip(ops, signs) for part in (op, sign)]


def rand_augmented(images, choices, suite):
    """RandAugment with each sample's ops and signs fed in (rand_augment_choices): DALI's suite,
    applied through DALI's conditional `select`, at magnitude RAND_AUGMENT_MAGNITUDE."""
    for op, sign in zip(choices[0::2], choices[1::2]):
        magnitude = signed_bin(RAND_AUGMENT_MAGNITUDE, random_sign=sign)
        images = select(suite, op, images, magnitude_bin=magnitude, num_magnitude_bins=RAND_AUGMENT_BINS,
                        fill_value=128)
    return images


def dali_device_id(device):
    """DALI's device_id for a torch device: its GPU for CUDA (under torchrun, the local rank's),
    None (CPU-only pipeline) otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.current_device() if device.index is None else device.index


def _crop_flip_normalize(images, draws, height, width, pad, flip, random_crop, mean, std):
    # draws: the view's crop positions and flips, fed per sample by the loader (_epoch_inputs).
    # pad: the zeros the pipeline adds on every side before a random crop; 0 when the loader
    # fed the images padded already (DaliLoader.batch_images).
    crop_x, crop_y, mirror = draws if random_crop else (0.5, 0.5, 0)
    if random_crop and pad:
        # Zero-pad by `pad` on every side (a centered crop larger than the image), then a
        # random crop back to the original size.
        images = fn.crop(images, crop=(height + 2 * pad, width + 2 * pad), out_of_bounds_policy="pad", fill_values=0)
    return fn.crop_mirror_normalize(images, crop=(height, width), crop_pos_x=crop_x, crop_pos_y=crop_y, mirror=mirror,
                                    mean=list(mean), std=list(std), dtype=types.FLOAT, output_layout="CHW")


@pipeline_def(enable_conditionals=True)  # RandAugment applies its ops with DALI conditionals
def _augment_pipeline(source, view, second_view, suite, gpu, views):
    # suite: the strong view's RandAugment ops (PipelineLoader.suite), else None
    strong = RAND_AUGMENT_DRAWS if suite else 0
    images, *draws = fn.external_source(source=source, num_outputs=1 + DRAWS * views + strong, batch=True,
                                        layout=["HWC"])
    if gpu:
        images = images.gpu()
    first = _crop_flip_normalize(images, draws[:DRAWS], **view)
    if second_view is None:
        return first
    if strong:
        images = rand_augmented(images, draws[DRAWS * views:], suite)
    return first, _crop_flip_normalize(images, draws[DRAWS:2 * DRAWS], **view)


class PipelineLoader(BatchOrder):
    """Batches through a DALI pipeline (`definition`: a pipeline_def function taking `source`)
    with one external source, whose callback gives the next run's inputs, PREFETCH runs ahead of
    the caller. A subclass gives _epoch_inputs(): for each run of the pipeline, (its sample
    indices, the external source's arrays, whether it ends a batch): a batch runs whole or in
    pieces (StreamingLoader: of bounded pixels), whose outputs the loader joins. A strong second
    view's RandAugment choices come last (_rand_augment_inputs)."""

    def __init__(self, count, batch_size, shuffle, seed, indices, drop_last, processes, device, num_threads, augment,
                 second_view, channels):
        if second_view not in SECOND_VIEWS:
            raise ValueError(f"second_view must be one of {SECOND_VIEWS}, got {second_view!r}")
        super().__init__(count, batch_size, shuffle, seed, indices, drop_last, processes)
        self._views = (1 + (second_view is not None)) if augment else 0  # views fed crop / flip draws
        # a strong second view's RandAugment ops: the pipeline applies them, the choices pick among them
        self.suite = rand_augment_suite(channels) if second_view == "strong" else None
        self.device = torch.device(device)
        self.device_id = dali_device_id(self.device)
        self._feed = _Feed()
        # DALI's batch_size is the largest batch it must hold, which the samples bound (a larger one
        # fails inside DALI); the batches themselves come from BatchOrder.
        self._options = dict(source=self._feed, batch_size=max(1, min(batch_size, count)), num_threads=num_threads,
                             device_id=self.device_id, prefetch_queue_depth=PREFETCH, exec_async=True,
                             exec_pipelined=True, exec_dynamic=True)
        self.definition = None
        self._pipe = None
        self._running = False  # an epoch under way: an iteration left before its end leaves batches in flight

    def __iter__(self):
        if self._pipe is None or self._running:
            self._pipe = build_quietly(self.definition, seed=self.seed % (2**31 - 1), **self._options)
        self._running = True
        self._feed.start(self._epoch_inputs())
        pieces = []  # the outputs of the batch's runs so far
        while True:
            try:
                outputs = self._pipe.run()
            except StopIteration:
                break
            except RuntimeError as error:
                raise self._explain() or error from None
            first, *second = (_to_torch(out, self.device) for out in outputs)
            indices, _, ends_batch = self._feed.in_flight.popleft()
            pieces.append((first, torch.from_numpy(indices), *second))
            if ends_batch:
                yield pieces[0] if len(pieces) == 1 else tuple(torch.cat(parts) for parts in zip(*pieces))
                pieces = []
        self._pipe.reset()
        self._running = False

    def _rand_augment_inputs(self, epoch, batch):
        """The strong view's per-sample RandAugment choices, or none."""
        return [] if self.suite is None else rand_augment_choices(self.seed, epoch, batch, len(self.suite))

    def _explain(self):
        """After DALI failed: a clearer error about the batches in flight, or None."""
        return None


class _Feed:
    """A pipeline's external source: the inputs of the epoch's next run, remembering the runs in
    flight (given to DALI, not yet out)."""

    def __init__(self):
        self.start(iter(()))

    def start(self, epoch_inputs):
        self.epoch_inputs, self.in_flight = epoch_inputs, deque()

    def __call__(self):
        run = next(self.epoch_inputs)  # StopIteration: the epoch's batches are all in
        self.in_flight.append(run)
        return run[1]


def mirrors(uniforms, flip):
    """Per-sample horizontal flips (int32 0 / 1) from uniforms: half of them with flip=True."""
    return ((uniforms < 0.5) & flip).astype(np.int32)


class DaliLoader(PipelineLoader):
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
        super().__init__(len(images), batch_size, shuffle, seed, indices, drop_last, processes, device, num_threads,
                         augment, second_view, images.shape[3])
        self.images = images
        height, width = images.shape[1:3]
        self.flip = augment and flip
        pad = max(1, height // 8)
        # Random crops pad on the host (a zeroed buffer per batch) unless a strong view's
        # RandAugment needs the unpadded images: in the pipeline the pad is an operator as costly
        # as the crop itself, which on a CPU run takes the cores from the model's step.
        self.pad = pad if augment and self.suite is None else 0
        view = dict(height=height, width=width, pad=pad - self.pad, flip=self.flip, random_crop=augment, mean=mean,
                    std=std)
        self.definition = functools.partial(_augment_pipeline, view=view, second_view=second_view,
                                            suite=self.suite, gpu=self.device_id is not None, views=self._views)

    def _epoch_inputs(self):
        batches = list(self.batches())
        if not batches:
            return
        # The per-sample inputs of the whole epoch in one hash (a sample's depend on nothing
        # else), cut per batch: DALI calls this on the training thread, once per batch.
        order = np.concatenate(batches)
        per_sample = [part for x, y, u in sample_uniforms(self.seed, self.epoch, order, self._views)
                      for part in (x, y, mirrors(u, self.flip))] + self._rand_augment_inputs(self.epoch, order)
        start = 0
        for batch in batches:
            rows = slice(start, start + len(batch))
            start = rows.stop
            yield batch, (self.batch_images(batch), *(part[rows] for part in per_sample)), True

    def batch_images(self, batch):
        """images[batch], zero-padded by self.pad on every side when the host pads."""
        if not self.pad:
            return self.images[batch]
        count, height, width, channels = len(batch), *self.images.shape[1:]
        padded = np.zeros((count, height + 2 * self.pad, width + 2 * self.pad, channels), np.uint8)
        padded[:, self.pad:self.pad + height, self.pad:self.pad + width] = self.images[batch]
        return padded


def build_quietly(pipeline, **options):
    """The built pipeline. DALI's own RandAugment calls operators that DALI has deprecated
    (fn.experimental.*) and forces those warnings on at every build: record them, pass on any others."""
    with warnings.catch_warnings(record=True) as caught:
        pipe = pipeline(**options)
        pipe.build()
    for warning in caught:
        if "fn.experimental." not in str(warning.message):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return pipe


def _to_torch(tensor_list, device):
    """A batch as a torch tensor on `device`; on the CPU a view of DALI's output, no copy: the
    loaders' pipelines (exec_dynamic) never reuse a batch's buffers, and the view keeps them."""
    if device.type == "cuda":
        out = torch.empty(tensor_list.as_tensor().shape(), dtype=torch.float32, device=device)
        from nvidia.dali.plugin.pytorch import feed_ndarray

        # the stream of the batch's device (a run on cuda:1 need not have made it the current device)
        feed_ndarray(tensor_list.as_tensor(), out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.asarray(tensor_list.as_tensor()))


@pipeline_def
def _decode_pipeline(size, channels):
    images = fn.decoders.image(fn.external_source(name="encoded", dtype=types.UINT8), device="cpu",
                               output_type=types.RGB if channels == 3 else types.GRAY)
    if size:
        images = fn.resize(images, resize_x=size, resize_y=size, dtype=types.UINT8)
    return images


def pixel_chunks(images):
    """Consecutive chunks (lists of the encoded images) of `images`, (encoded, pixels) pairs
    taken from an iterable only as the chunks need them: each of at most DECODE_BATCH images and
    DECODE_PIXELS pixels; an image larger than that goes alone, as does one whose header does not
    tell its size (pixels None)."""
    chunk, total = [], 0
    for encoded, pixels in images:
        pixels = DECODE_PIXELS if pixels is None else pixels
        if chunk and (total + pixels > DECODE_PIXELS or len(chunk) == DECODE_BATCH):
            yield chunk
            chunk, total = [], 0
        chunk.append(encoded)
        total += pixels
    if chunk:
        yield chunk


def decode_images(count, read, size=None, channels=3, name=lambda i: f"image #{i}"):
    """`count` encoded images decoded to uint8 NHWC, resized to size x size when given (needed
    when the images differ in size). read(i): image i's (bytes as uint8, pixels its header
    declares or None), called as the chunks (pixel_chunks) need it, so that memory holds one
    chunk's bytes and full-size pixels beside the result. An image that does not decode raises
    a DataFileError naming it by name(i)."""
    pipe = _decode_pipe(size, channels, DECODE_BATCH)
    images, start = np.zeros((0, size or 0, size or 0, channels), np.uint8), 0  # as no images come out
    for chunk in pixel_chunks(map(read, range(count))):
        try:
            decoded = _decode_batch(pipe, chunk)
        except RuntimeError as error:
            raise undecodable(chunk, lambda i: name(start + i), size, channels) or error from None
        if not start:  # the first chunk tells the images' shape
            images = np.empty((count, *decoded.shape[1:]), np.uint8)
        images[start:start + len(chunk)] = decoded
        start += len(chunk)
    return images


def undecodable(encoded, name, size=None, channels=3):
    """After DALI failed on the images `encoded`: a DataFileError naming (name(i)) the first that
    does not decode, or None. DALI names neither the file nor, always, the sample, and its
    pipeline is unusable after a failure: decode them one at a time on a fresh one to find it.
    Pillow tells an image of a kind or variant that DALI does not read (a GIF, a 1-bit TIFF
    without BitsPerSample, a PNG without its end chunk) from one that is broken."""
    bad = _first_undecodable(encoded, size, channels)
    if bad is None:
        return None
    kind = pillow_format(encoded[bad])
    if kind is None:
        return DataFileError(f"{name(bad)}: not a decodable image (empty, truncated or corrupt)")
    return DataFileError(f"{name(bad)}: a {kind} image the decoder does not read; re-save it as JPEG or PNG (Pillow "
                         f"reads it)")


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
