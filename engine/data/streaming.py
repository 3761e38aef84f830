"""Images streamed from their files (ImageFiles): only the paths stay in memory, so memory does
not grow with the number of images. Per batch, a thread pool reads the files' bytes (ahead of
DALI, so reading overlaps the training step) and DALI decodes them ("mixed", nvJPEG, on CUDA;
the CPU elsewhere), crops, resizes, flips and normalizes them, PREFETCH batches ahead.

Training views are random-resized crops: a fraction in [0.08, 1] of the image's area with an
aspect ratio log-uniform in [3/4, 4/3] (relative to the image's own), clipped to the image, resized
to size x size; only the crop is decoded where the format allows (JPEG). Like the in-memory
pipeline's crops they come from sample_uniforms, a hash of (seed, epoch, sample index, view): a
sample's crop does not depend on its batch, its process or the epochs before. Evaluation resizes
the shorter side to size * 8/7 (256 for 224) and takes the center size x size.
"""
import functools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.auto_aug import rand_augment

from engine.data.datasets import ImageFiles
from engine.data.pipeline import (RAND_AUGMENT_MAGNITUDE, RAND_AUGMENT_OPS, PipelineLoader, mirrors, sample_uniforms,
                                  undecodable)
from engine.distributed import Processes

AREA = (0.08, 1.0)      # random-resized crop: the fraction of the image's area
RATIO = (3 / 4, 4 / 3)  # and its aspect ratio (log-uniform)
CROP_DRAWS = 5          # uniforms per sample and view: area, ratio, x, y, flip
EVAL_RESIZE = 8 / 7     # evaluation: the shorter side to size * 8/7, then the center crop
READ_AHEAD = 1          # batches whose files are read beyond those handed to DALI
_READER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="read-images")  # file reads release the GIL


def resized_crops(uniforms, flip):
    """(rel_start [B, 2] as (x, y), rel_shape [B, 2] as (width, height), both fractions of the
    image, mirror [B] int32) of random-resized crops from [CROP_DRAWS, B] uniforms."""
    area, ratio, x, y, u = uniforms
    area = AREA[0] + (AREA[1] - AREA[0]) * area
    ratio = RATIO[0] * (RATIO[1] / RATIO[0]) ** ratio
    shape = np.minimum(1, np.sqrt(np.stack([area * ratio, area / ratio], 1))).astype(np.float32)
    # DALI refuses a crop past the image: start + shape <= 1 in float32 too (what DALI rounds from)
    start = np.minimum(np.stack([x, y], 1) * (1 - shape), 1 - shape).astype(np.float32)
    return start, shape, mirrors(u, flip)


@pipeline_def(enable_conditionals=True)  # RandAugment picks its ops with DALI conditionals
def _file_pipeline(source, size, views, strong, mean, std, decoder):
    encoded, *draws = fn.external_source(source=source, num_outputs=1 + 3 * views, batch=True)
    normalize = dict(mean=list(mean), std=list(std), dtype=types.FLOAT, output_layout="CHW")
    if not views:  # evaluation
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        images = fn.resize(images, resize_shorter=round(size * EVAL_RESIZE))
        return fn.crop_mirror_normalize(images, crop=(size, size), **normalize)
    # One view decodes only its crop; two decode the image once and crop it twice.
    decoded = fn.decoders.image(encoded, device=decoder, output_type=types.RGB) if views > 1 else None
    outputs = []
    for view in range(views):
        start, shape, mirror = draws[3 * view:3 * view + 3]
        if decoded is None:
            images = fn.decoders.image_slice(encoded, device=decoder, output_type=types.RGB, rel_start=start,
                                             rel_shape=shape)
        else:
            images = fn.slice(decoded, rel_start=start, rel_shape=shape, axis_names="WH")
        images = fn.resize(images, resize_x=size, resize_y=size)
        if view and strong:
            images = rand_augment.rand_augment(images, n=RAND_AUGMENT_OPS, m=RAND_AUGMENT_MAGNITUDE)
        outputs.append(fn.crop_mirror_normalize(images, mirror=mirror, **normalize))
    return tuple(outputs)


class StreamingLoader(PipelineLoader):
    """Iterates over (images [B, 3, size, size] float32, indices [B] int64) of `files[subset]`
    (ImageFiles), or (images, indices, second view of the same images) when second_view is "weak"
    (another crop and flip) or "strong" (RandAugment too); options as DaliLoader's. augment:
    random-resized crops and, if `flip`, horizontal flips; otherwise the evaluation resize and
    center crop. A file that cannot be read or decoded is a ValueError naming it."""

    def __init__(self, files, batch_size, mean, std, device="cpu", shuffle=False, augment=False, flip=False,
                 seed=0, indices=None, drop_last=False, num_threads=None, second_view=None, processes=Processes()):
        if not isinstance(files, ImageFiles):
            raise ValueError(f"files must be ImageFiles, got {type(files).__name__}")
        super().__init__(len(files), batch_size, shuffle, seed, indices, drop_last, processes, device,
                         num_threads or min(8, os.cpu_count() or 1), augment, second_view)
        self.files, self.flip = files, augment and flip
        self.definition = functools.partial(_file_pipeline, size=files.size, views=self._views,
                                            strong=second_view == "strong", mean=mean, std=std,
                                            decoder="cpu" if self.device_id is None else "mixed")

    def _epoch_inputs(self):
        epoch, reading = self.epoch, deque()
        for batch in self.batches():
            reading.append((batch, [_READER.submit(self.files.read, i) for i in batch]))
            if len(reading) > READ_AHEAD:
                yield self._inputs(epoch, *reading.popleft())
        while reading:
            yield self._inputs(epoch, *reading.popleft())

    def _inputs(self, epoch, batch, reads):
        crops = (part for view in sample_uniforms(self.seed, epoch, batch, self._views, CROP_DRAWS)
                 for part in resized_crops(view, self.flip))
        return batch, ([read.result() for read in reads], *crops)

    def _explain(self):
        for batch, (encoded, *_) in self._feed.in_flight:
            found = undecodable(encoded, lambda i, batch=batch: self.files.name(batch[i]), self.files.size)
            if found is not None:
                return found
        return None
