"""Images per second of `ssfa pretrain`'s data loading on a folder of JPEGs, against fastai's default pipeline.

A folder of N JPEGs of 500x375 px (crops of the packaged photos, `photos.photo_crops`, quality 90) is read at
`--size` three ways, each feeding the same SimCLR model:
  fastai   ImageDataLoaders.from_df(..., item_tfms=Resize(size)) + Normalize: PILImage.create decodes every JPEG in full
  ssfa     loading.folder_dls (what `ssfa pretrain` builds): open_image decodes JPEGs at the smallest DCT scale that
           keeps `size` (Image.draft), then the same Resize(size)
  ssfa --cache  the same on the one-time resized cache (loading.cache_images: shorter side = size, JPEG q95); the
           cache's one-time build is timed apart
Measured, interleaved over `--rounds` rounds (order rotated each round): (1) data loading alone: `--batches` batches
of `--bs` from the training DataLoader, in CPU seconds of this process (workers=0: robust to other jobs on the machine)
and in wall seconds with `--workers` worker processes; (2) the full training step (fastai Learner + SimCLRCallback,
forward, backward, step) on the same batches, CPU seconds, one torch thread.
Usage: python benchmarks/bench_own_data_loading.py [--n 2000] [--size 128] [--bs 64] [--arch resnet18]
"""
import argparse, os, platform, shutil, statistics, sys, time
from pathlib import Path
import numpy as np, pandas as pd, torch
from PIL import Image
from fastai.callback.core import Callback, CancelFitException
from fastai.vision.all import ImageDataLoaders, Resize, Normalize
from self_supervised_fa.data.photos import load_photo, photo_crops, PHOTO_CLASSES
from self_supervised_fa.data.loading import folder_dls, cache_images, image_stats
from self_supervised_fa.app.workflow import folder_method_learner


def make_folder(root:Path, n:int, seed:int=0) -> pd.DataFrame:
    "n JPEGs of 500x375 px (crops of the packaged photos) in root/images, once"
    fn = root/'items.csv'
    if fn.exists() and len(pd.read_csv(fn)) == n: return pd.read_csv(fn)
    (root/'images').mkdir(parents=True, exist_ok=True)
    rng, rows = np.random.default_rng(seed), []
    per = -(-n // len(PHOTO_CLASSES))
    for c in PHOTO_CLASSES:
        for im, _ in photo_crops(load_photo(c), per, rng, side=(0.4, 0.9), ratio=(0.75, 0.75), out_size=(500, 500)):
            if len(rows) == n: break
            im = im.resize((500, 375), Image.BICUBIC)
            name = f'img_{len(rows):05d}.jpg'; im.save(root/'images'/name, quality=90)
            rows.append((name, str(root/'images'/name), c))
    df = pd.DataFrame(rows, columns=['name', 'fname', 'label']); df.to_csv(fn, index=False)
    return df


class StopAfter(Callback):
    "Time `n` training batches after one warm-up batch (CPU seconds of this process), then stop the fit"
    order = 100
    def __init__(self, n): self.n, self.t = n, None
    def after_batch(self):
        if self.iter == 0: self.t = time.process_time()
        elif self.iter == self.n: self.t = time.process_time() - self.t; raise CancelFitException


def loaders(kind, df, cache, size, bs, workers, stats):
    items = df.assign(is_valid=False, fname=cache if kind == 'ssfa --cache' else df.fname)
    items.loc[items.index[:bs], 'is_valid'] = True
    if kind == 'fastai':
        return ImageDataLoaders.from_df(items, path='/', fn_col='fname', label_col='label', valid_col='is_valid',
                                        item_tfms=Resize(size), batch_tfms=Normalize.from_stats(*stats), bs=bs,
                                        num_workers=workers)
    return folder_dls(items, size, 3, bs, stats, num_workers=workers)


def time_loading(dls, n_batches, clock):
    it = iter(dls.train); next(it)   # the first batch starts the workers
    t = clock()
    for _ in range(n_batches): next(it)
    return clock() - t


def main(a):
    torch.set_num_threads(1)
    root = Path(a.dir)
    t0 = time.time(); df = make_folder(root, a.n); print(f"folder: {len(df)} JPEGs of 500x375 in {root} ({time.time()-t0:.0f} s)")
    for c in ('cache', 'cache2'): shutil.rmtree(root/c, ignore_errors=True)   # time a build from nothing
    t0 = time.time(); cache = cache_images(df.fname, a.size, 3, root/'cache', progress=False); t_cache_wall = time.time() - t0
    t0 = time.process_time(); cache_images(df.fname, a.size, 3, root/'cache2', workers=1, progress=False); t_cache_cpu = time.process_time() - t0
    stats = image_stats(df.fname, 3, a.size)
    kinds = ['fastai', 'ssfa', 'ssfa --cache']
    res = {k: {'load_cpu': [], 'load_wall': [], 'step_cpu': []} for k in kinds}
    for r in range(a.rounds):
        for k in kinds[r % 3:] + kinds[:r % 3]:
            n_img = a.batches * a.bs
            res[k]['load_cpu'].append(n_img / time_loading(loaders(k, df, cache, a.size, a.bs, 0, stats), a.batches, time.process_time))
            res[k]['load_wall'].append(n_img / time_loading(loaders(k, df, cache, a.size, a.bs, a.workers, stats), a.batches, time.perf_counter))
            dls = loaders(k, df, cache, a.size, a.bs, 0, stats)
            learn = folder_method_learner('simclr', dls, a.arch, 3, a.size)   # what `ssfa pretrain` builds
            stop = StopAfter(a.step_batches)
            with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3, cbs=stop)
            res[k]['step_cpu'].append(a.step_batches * a.bs / stop.t)
            print(r, k, {m: round(v[-1], 1) for m, v in res[k].items()}, flush=True)
    load = os.getloadavg()[0]
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in res.items()}
    rows = []
    for k in kinds:
        rows.append(f"| {k} | {med[k]['load_cpu']:.0f} | {med[k]['load_cpu']/med['fastai']['load_cpu']:.2f} | "
                    f"{med[k]['load_wall']:.0f} | {med[k]['load_wall']/med['fastai']['load_wall']:.2f} | "
                    f"{med[k]['step_cpu']:.1f} | {med[k]['step_cpu']/med['fastai']['step_cpu']:.2f} |")
    cmd = 'python benchmarks/' + Path(sys.argv[0]).name + ' ' + ' '.join(sys.argv[1:])
    text = f"""Data loading of `ssfa pretrain` on a folder of {a.n} JPEGs of 500x375 px at `--size {a.size}`, batch {a.bs}, against
fastai's default `ImageDataLoaders.from_df(item_tfms=Resize({a.size}))`, each feeding the same SimCLR {a.arch}.
Medians of {a.rounds} interleaved rounds; ratios to fastai's pipeline.

Machine: {os.cpu_count()}-core CPU, {platform.python_version()}, torch {torch.__version__}, no GPU; one torch thread;
CPU shared with other jobs (load average {load:.1f} at the end).

Command: `{cmd}`

| pipeline | loading, images/s per CPU core (workers=0) | ratio | loading, images/s wall ({a.workers} workers) | ratio | full SimCLR step, images/s per core | ratio |
|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

One-time cache build ({a.n} images): {t_cache_wall:.1f} s wall with the default threads, {t_cache_cpu:.1f} CPU s on one thread
({a.n / t_cache_cpu:.0f} images per CPU second).

All runs (images/s): {', '.join(f"{k} {m}: {[round(x) for x in v]}" for k, d in res.items() for m, v in d.items())}
"""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text); print(text)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=2000); p.add_argument('--size', type=int, default=128)
    p.add_argument('--bs', type=int, default=64); p.add_argument('--arch', default='resnet18')
    p.add_argument('--batches', type=int, default=10, help='batches timed for loading')
    p.add_argument('--step-batches', type=int, default=2, help='batches timed for the full step')
    p.add_argument('--rounds', type=int, default=3); p.add_argument('--workers', type=int, default=2)
    p.add_argument('--dir', default='/tmp/ssfa_bench_jpegs')
    p.add_argument('--out', default='benchmarks/results/own_data_loading.md')
    main(p.parse_args())
