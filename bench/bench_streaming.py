"""The streaming pipeline (engine/data/streaming.py) against what a user would write: PIL open,
a RandomResizedCrop-equivalent, flip, normalize, in a torch DataLoader with as many workers as
DALI has threads. Both train-augment one epoch of a generated tree of JPEGs; then the peak
resident memory of a process that runs one streamed epoch over 2,000 and 20,000 images.

    python bench/bench_streaming.py [--images 2000] [--workers 2] [--rss 2000,20000]

The tree (10 class folders of 256 px JPEGs, smooth CIFAR-like content) is written once to
--root. The memory runs list the tree's files again and again when asked for more images than
it has: the loader holds paths, so what counts is their number.
"""
import argparse
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine.data.datasets import ImageFiles  # noqa: E402
from engine.data.streaming import AREA, RATIO, StreamingLoader  # noqa: E402

MEAN, STD = (124.0, 116.0, 104.0), (58.0, 57.0, 57.0)


def write_image(job):
    path, seed, size = job
    small = np.random.default_rng(seed).integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((size, size), Image.BICUBIC).save(path, quality=90)


def image_tree(root, count, size):
    """root/<class>/<i>.jpg, count JPEGs of size x size in 10 classes; the relative paths."""
    paths = [os.path.join(f"c{i % 10}", f"{i}.jpg") for i in range(count)]
    jobs = [(os.path.join(root, path), i, size) for i, path in enumerate(paths)
            if not os.path.exists(os.path.join(root, path))]
    for cls in range(10):
        os.makedirs(os.path.join(root, f"c{cls}"), exist_ok=True)
    with ProcessPoolExecutor() as pool:
        list(pool.map(write_image, jobs, chunksize=64))
    return np.array(paths)


class PilImages(torch.utils.data.Dataset):
    """The baseline: torchvision's RandomResizedCrop (10 tries at an absolute aspect ratio, then the
    center crop), RandomHorizontalFlip, ToTensor and Normalize, in PIL / numpy / torch."""

    def __init__(self, root, paths, size):
        self.root, self.paths, self.size = root, paths, size
        self.mean, self.std = (torch.tensor(v).view(3, 1, 1) / 255 for v in (MEAN, STD))

    def __len__(self):
        return len(self.paths)

    def crop_box(self, width, height, rng):
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*AREA)
            ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
                return left, top, left + w, top + h
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2

    def __getitem__(self, index):
        rng = np.random.default_rng()
        with Image.open(os.path.join(self.root, self.paths[index])) as image:
            image = image.convert("RGB")
            image = image.resize((self.size, self.size), Image.BILINEAR, box=self.crop_box(*image.size, rng))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
        return (x - self.mean) / self.std, index


def images_per_second(batches, count):
    """Images per second over an epoch of `batches`, from the end of its first batch."""
    iterator = iter(batches)
    first = len(next(iterator)[1])
    began, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += len(batch[1])
    assert first + seen == count, (first + seen, count)
    return seen / (time.perf_counter() - began)


# One streamed training epoch over `count` paths (cycling over the tree's files) in a fresh
# process; prints its peak resident memory in MiB.
RSS_SCRIPT = """
import sys
import numpy as np
from engine.data.datasets import ImageFiles
from engine.data.streaming import StreamingLoader
root, count, size, batch, workers = sys.argv[1], *map(int, sys.argv[2:])
paths = np.array(sys.stdin.read().split())
loader = StreamingLoader(ImageFiles(root, np.resize(paths, count), size), batch, (124.0, 116.0, 104.0),
                         (58.0, 57.0, 57.0), shuffle=True, augment=True, flip=True, num_threads=workers)
for _ in loader:
    pass
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024)
"""


def peak_rss(root, paths, count, args):
    result = subprocess.run([sys.executable, "-c", RSS_SCRIPT, root, str(count), str(args.image_size),
                             str(args.batch_size), str(args.workers)], input="\n".join(paths), cwd=REPO,
                            capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the tree (20000 for the large run)")
    parser.add_argument("--size", type=int, default=256, help="their size (pixels, square)")
    parser.add_argument("--image-size", type=int, default=224, help="the training crops' size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers = DALI threads")
    parser.add_argument("--rss", default="2000,20000", help="image counts of the peak-memory runs")
    parser.add_argument("--root", default=None, help="where the tree is written (default: /tmp/bench_streaming_N)")
    args = parser.parse_args()
    root = args.root or f"/tmp/bench_streaming_{args.images}_{args.size}"
    paths = image_tree(root, args.images, args.size)

    streaming = StreamingLoader(ImageFiles(root, paths, args.image_size), args.batch_size, MEAN, STD, shuffle=True,
                                augment=True, flip=True, num_threads=args.workers)
    baseline = torch.utils.data.DataLoader(PilImages(root, paths, args.image_size), args.batch_size, shuffle=True,
                                           num_workers=args.workers, persistent_workers=True)
    rates = {}
    for name, batches in (("streaming (DALI)", streaming), ("PIL + DataLoader", baseline)):
        images_per_second(batches, len(paths))  # warm-up: the page cache, the pipeline, the workers
        rates[name] = images_per_second(batches, len(paths))
    print(f"\n{len(paths)} JPEGs of {args.size} px -> {args.image_size} px training crops, batch {args.batch_size}, "
          f"{args.workers} workers / threads, CPU")
    print("| pipeline | images/s | ratio |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} | {rate / rates['PIL + DataLoader']:.2f} |")

    print(f"\n| images | peak RSS, streamed epoch (MiB) | held in memory at {args.image_size} px (MiB) |")
    print("|---|---|---|")
    for count in map(int, args.rss.split(",")):
        held = count * args.image_size ** 2 * 3 / 2**20
        print(f"| {count} | {peak_rss(root, paths, count, args):.0f} | {held:.0f} |", flush=True)


if __name__ == "__main__":
    main()
