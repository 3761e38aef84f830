"""Images streamed from their files (ImageFiles): only the paths stay in memory, so memory does
not grow with the number of images. Per batch, a thread pool reads the files' bytes (ahead of
DALI, so reading overlaps the training step) and DALI decodes them ("mixed", nvJPEG, on CUDA;
the CPU elsewhere), crops, resizes, flips and normalizes them, PREFETCH runs ahead. A run takes
at most DECODE_PIXELS full-size pixels (pixel_chunks): a batch of large photos runs in pieces,
joined again, so that memory does not grow with their size times the batch size either.

Training views are random-resized crops: a fraction in [0.08, 1] of the image's area with an
aspect ratio (width / height in pixels) log-uniform in [3/4, 4/3], as torchvision's
RandomResizedCrop draws them; one too large for the image shrinks to the largest crop of its
aspect that fits (where torchvision draws again). The crop is resized to size x size; only
the crop is decoded where the format allows (JPEG). Like the in-memory pipeline's crops they
come from sample_uniforms, a hash of (seed, epoch, sample index, view): a sample's crop does
not depend on its batch, its process or the epochs before. Evaluation resizes the shorter side
to size * 8/7 (256 for 224) and takes the center size x size.
"""
import functools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math

from engine.data.datasets import ImageFiles
from engine.data.pipeline import (RAND_AUGMENT_DRAWS, PipelineLoader, mirrors, pixel_chunks, rand_augmented,
                                  sample_uniforms, undecodable)
from engine.distributed import Processes

AREA = (0.08, 1.0)      # random-resized crop: the fraction of the image's area
RATIO = (3 / 4, 4 / 3)  # and its aspect ratio (log-uniform)
CROP_DRAWS = 5          # uniforms per sample and view: area, ratio, x, y, flip
EVAL_RESIZE = 8 / 7     # evaluation: the shorter side to size * 8/7, then the center crop
READ_AHEAD = 1          # batches whose files are read beyond those handed to DALI
_READER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="read-images")  # file reads release the GIL


def crop_draws(uniforms, flip):
    """(area, ratio, x, y), float32 [B] each, and mirror [B] int32 of random-resized crops from
    [CROP_DRAWS, B] uniforms: the crop's area as a fraction of the image's, its width / height in
    pixels, and where it starts within the room the image leaves (crop_window)."""
    area, ratio, x, y, u = uniforms
    area = AREA[0] + (AREA[1] - AREA[0]) * area
    ratio = RATIO[0] * (RATIO[1] / RATIO[0]) ** ratio
    return *(v.astype(np.float32) for v in (area, ratio, x, y)), mirrors(u, flip)


def crop_window(area, ratio, x, y, aspect, sqrt, minimum):
    """(start x, start y, width, height) of a crop as fractions of an image whose height / width
    is `aspect`. One formula for the pipeline, which knows the image's shape only once DALI reads
    its header (sqrt, minimum from nvidia.dali.math), and for numpy (np.sqrt, np.minimum)."""
    width, height = sqrt(area * ratio * aspect), sqrt(area / ratio / aspect)
    fit = minimum(minimum(1.0, 1.0 / width), 1.0 / height)  # too large: the largest crop of its aspect that fits
    width, height = minimum(1.0, width * fit), minimum(1.0, height * fit)
    # DALI refuses a crop past the image: start + size <= 1 in float32 too
    return minimum(x * (1 - width), 1 - width), minimum(y * (1 - height), 1 - height), width, height


@pipeline_def(enable_conditionals=True)  # RandAugment applies its ops with DALI conditionals
def _file_pipeline(source, size, views, second, suite, mean, std, decoder):
    # views: the random crops fed draws (0: none, evaluation's center crop); second: a second view
    # of each image; suite: the strong view's RandAugment ops (PipelineLoader.suite), else None
    choices = RAND_AUGMENT_DRAWS if suite else 0
    encoded, *draws = fn.external_source(source=source, num_outputs=1 + CROP_DRAWS * views + choices, batch=True)
    normalize = dict(mean=list(mean), std=list(std), dtype=types.FLOAT, output_layout="CHW")
    if not views:  # evaluation, or training without augmentation
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=round(size * EVAL_RESIZE))
        first = fn.crop_mirror_normalize(images, crop=(size, size), **normalize)
        if not second:
            return first
        # as the in-memory pipeline without augmentation: the same view, RandAugment on a strong one
        if suite:
            images = rand_augmented(fn.crop(images, crop=(size, size)), draws, suite)
        return first, fn.crop_mirror_normalize(images, crop=(size, size), **normalize)
    # One view decodes only its crop; two decode the image once and crop it twice.
    decoded = fn.decoders.image(encoded, device=decoder, output_type=types.RGB) if views > 1 else None
    height_width = fn.peek_image_shape(encoded, dtype=types.FLOAT)  # from the header: H, W, C
    aspect = height_width[0] / height_width[1]
    outputs = []
    for view in range(views):
        area, ratio, x, y, mirror = draws[CROP_DRAWS * view:CROP_DRAWS * (view + 1)]
        start_x, start_y, width, height = crop_window(area, ratio, x, y, aspect, dali_math.sqrt, dali_math.min)
        start, shape = fn.stack(start_x, start_y), fn.stack(width, height)
        if decoded is None:
            images = fn.decoders.image_slice(encoded, device=decoder, output_type=types.RGB, rel_start=start,
                                             rel_shape=shape)
        else:
            images = fn.slice(decoded, rel_start=start, rel_shape=shape, axis_names="WH")
        images = fn.resize(images, resize_x=size, resize_y=size)
        if view and suite:
            images = rand_augmented(images, draws[CROP_DRAWS * views:], suite)
        outputs.append(fn.crop_mirror_normalize(images, mirror=mirror, **normalize))
    return tuple(outputs)


class StreamingLoader(PipelineLoader):
    """Iterates over (images [B, 3, size, size] float32, indices [B] int64) of `files[subset]`
    (ImageFiles), or (images, indices, second view of the same images) when second_view is "weak"
    (another crop and flip) or "strong" (RandAugment too); options as DaliLoader's. augment:
    random-resized crops and, if `flip`, horizontal flips; otherwise the evaluation resize and
    center crop. A file that cannot be read or decoded is a DataFileError naming it."""

    def __init__(self, files, batch_size, mean, std, device="cpu", shuffle=False, augment=False, flip=False,
                 seed=0, indices=None, drop_last=False, num_threads=None, second_view=None, processes=Processes()):
        if not isinstance(files, ImageFiles):
            raise ValueError(f"files must be ImageFiles, got {type(files).__name__}")
        super().__init__(len(files), batch_size, shuffle, seed, indices, drop_last, processes, device,
                         num_threads or min(8, os.cpu_count() or 1), augment, second_view, channels=3)  # decoded as RGB
        self.files, self.flip = files, augment and flip
        self.definition = functools.partial(_file_pipeline, size=files.size, views=self._views,
                                            second=second_view is not None, suite=self.suite, mean=mean, std=std,
                                            decoder="cpu" if self.device_id is None else "mixed")

    def _epoch_inputs(self):
        epoch, reading = self.epoch, deque()
        for batch in self.batches():
            reading.append((batch, deque(_READER.submit(self.files.read, i) for i in batch)))
            if len(reading) > READ_AHEAD:
                yield from self._pieces(epoch, *reading.popleft())
        while reading:
            yield from self._pieces(epoch, *reading.popleft())

    def _pieces(self, epoch, batch, reads):
        """The runs of `batch`: pieces of bounded pixels (pixel_chunks), as DALI decodes an image
        whole before it crops or resizes it (only a JPEG's single crop is decoded alone)."""
        per_sample = [*(part for view in sample_uniforms(self.seed, epoch, batch, self._views, CROP_DRAWS)
                        for part in crop_draws(view, self.flip)), *self._rand_augment_inputs(epoch, batch)]
        start = 0
        for encoded in pixel_chunks(reads.popleft().result() for _ in range(len(reads))):
            rows = slice(start, start + len(encoded))
            start = rows.stop
            yield batch[rows], (encoded, *(part[rows] for part in per_sample)), start == len(batch)

    def _explain(self):
        for batch, (encoded, *_), _ in self._feed.in_flight:
            found = undecodable(encoded, lambda i, batch=batch: self.files.name(batch[i]), self.files.size)
            if found is not None:
                return found
        return None
