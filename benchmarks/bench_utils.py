"""Pieces the pretext benchmarks share: resumable JSON cells, a CPU-time training budget, the fair random-init
baseline, best-stage probes on frozen features, markdown tables and a description of the machine."""
import copy, json, os, platform, time
from contextlib import contextmanager
from pathlib import Path
import numpy as np, torch
from torch import nn
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.schedule import *   # fit_one_cycle
from self_supervised_fa.evaluate.embeddings import get_stage_embeddings
from self_supervised_fa.evaluate.probes import budget_indices, best_stage, knn_accuracy, linear_probe


@contextmanager
def locked(path):
    "An exclusive lock on `.<name>.lock` beside `path`, held for one read-modify-write of `path` by one of several runs"
    import fcntl
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f'.{path.name}.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- resumable cells: one JSON file per benchmark, rewritten atomically after every finished cell
class Cells:
    "A JSON dict on disk: `get(key)` a finished cell's result, `put(key, value)` merges it in and rewrites the file atomically"
    def __init__(self, path):
        self.path = Path(path)
        self.data = self._read()
    def _read(self): return json.loads(self.path.read_text()) if self.path.exists() else {}
    def get(self, key): return self.data.get(key)
    def put(self, key, value):
        with locked(self.path):   # several runs may share the file: re-read under the lock, add, replace
            self.data = {**self._read(), key: value}
            write_text_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True))
        return value


def pretrained_cell(cells, key, cache, train):
    """A pretraining cell whose result and encoder are kept apart: the result (no paths) goes to the committed cells file,
    the encoder to a safetensors file in the gitignored `cache`. `train()` -> (encoder, result dict) runs when the cell is
    not done, and again when a caller needs the encoder and its file is gone (a fresh checkout). Returns the result and a
    function giving the encoder file's path, so finished downstream cells never need the file."""
    from self_supervised_fa.encoders.files import save_encoder
    path = Path(cache)/(key.replace('/', '_').replace(':', '-') + '.safetensors')
    def run():
        enc, res = train()
        save_encoder(enc, path)
        return cells.put(key, res)
    res = cells.get(key) or run()
    def encoder_path():
        if not path.exists(): print(f'{path} missing: retraining {key}', flush=True); run()
        return path
    return {k: v for k, v in res.items() if k != 'encoder'}, encoder_path


def write_text_atomic(path, text):
    "Write `text` to `path` through the library's atomic writer (readers never see half a file)"
    from self_supervised_fa.core.io import atomic_path
    with atomic_path(path) as tmp: Path(tmp).write_text(text)


# --- a training budget in CPU seconds of this process (robust to other jobs sharing the cores, unlike wall time)
class _BatchClock(Callback):
    "Records the CPU seconds of each training batch and stops the fit after `n` batches"
    order = 99
    def __init__(self, n): self.n, self.secs = n, []
    def before_batch(self): self.t = time.process_time()
    def after_batch(self):
        if not self.training: return
        self.secs.append(time.process_time() - self.t)
        if len(self.secs) >= self.n: raise CancelFitException


def cpu_per_batch(learn, lr, n=6) -> float:
    "Median CPU seconds of a training batch of `learn` (measured on a copy of its model, which is thrown away)"
    model = learn.model
    learn.model = copy.deepcopy(model)
    clock = _BatchClock(n)
    try:
        with learn.no_bar(), learn.no_logging(): learn.fit(1, lr, cbs=clock)
    finally: learn.model = model; learn.opt = None
    return float(np.median(clock.secs[1:] or clock.secs))


def fit_cpu_budget(learn, budget_s, lr, max_epochs=200) -> dict:
    "`fit_one_cycle` for as many epochs as fit in `budget_s` CPU seconds (batches timed first); the epochs and CPU/wall seconds spent"
    per = cpu_per_batch(learn, lr)
    epochs = int(max(1, min(max_epochs, round(budget_s / (per * len(learn.dls.train))))))
    c0, w0 = time.process_time(), time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    return dict(epochs=epochs, cpu_per_batch=round(per, 3), cpu_s=round(time.process_time() - c0), wall_s=round(time.perf_counter() - w0))


# --- the colour crops (colorize.get_colour_sample), as RGB or as the luminance a colorizer's encoder reads
def colour_crops_dls(n_per_photo=200, bs=64, grey=False, all_train=False, n_valid=100, seed=0, photos=None):
    """DataLoaders of the colour crops labelled by photo: RGB normalised with ImageNet statistics, or (`grey`) their luminance
    (Rec. 601, as `ColorizeCallback` makes it) normalised by the luminance of those statistics. `all_train`: every crop in the
    training set (labels unused: pretraining on all images) and `n_valid` of them again as the validation set. `photos`:
    `get_colour_sample`'s (default: its five)"""
    import pandas as pd
    from fastai.data.block import DataBlock, CategoryBlock
    from fastai.data.transforms import ColReader, ColSplitter, Normalize
    from fastai.vision.data import ImageBlock
    from fastai.vision.core import PILImageBW, imagenet_stats
    from kornia.color import rgb_to_grayscale
    from self_supervised_fa.data.colour import get_colour_sample
    root = get_colour_sample(size=32, n_per_photo=n_per_photo, photos=photos)
    df = pd.read_csv(root/'crops.csv')
    if all_train: df = pd.concat([df.assign(is_valid=False), df.sample(n_valid, random_state=seed).assign(is_valid=True)], ignore_index=True)
    luma = lambda v: rgb_to_grayscale(torch.tensor(v).view(1, 3, 1, 1)).flatten().tolist()
    norm = Normalize.from_stats(luma(imagenet_stats[0]), luma(imagenet_stats[1])) if grey else Normalize.from_stats(*imagenet_stats)
    dblock = DataBlock(blocks=(ImageBlock(cls=PILImageBW) if grey else ImageBlock, CategoryBlock),
                       get_x=ColReader('image_id', pref=root/'images', suff='.png'), get_y=ColReader('label'),
                       splitter=ColSplitter('is_valid'), batch_tfms=[norm])
    return dblock.dataloaders(df, bs=bs, num_workers=0)


# --- baselines
def unzero_bn(body):
    "A copy of `body` with the BatchNorm scales that are all zero (timm's `zero_init_last` residual branches) set to 1"
    body = copy.deepcopy(body)
    for m in body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.any(): nn.init.ones_(m.weight)
    return body


def pixel_probe(dls, n_per_class=10, seeds=(0, 1, 2)) -> dict:
    "kNN and linear probe on the raw (normalised) pixels, `n_per_class` labels per class, mean over label draws"
    def grab(dl):
        xs, ys = zip(*[(b[0].flatten(1).float().cpu(), b[1].cpu()) for b in dl.new(shuffle=False, drop_last=False)])
        return torch.cat(xs), torch.cat(ys)
    (trx, trl), (tex, tel) = grab(dls.train), grab(dls.valid)
    knn, lin = [], []
    for s in seeds:
        idx = budget_indices(trl, n_per_class, s)
        knn.append(knn_accuracy(trx[idx], trl[idx], tex, tel, k=min(20, len(idx)), topk=(1,))['top1'])
        lin.append(linear_probe(trx[idx], trl[idx], tex, tel, seed=s))
    return dict(knn=float(np.mean(knn)), linear=float(np.mean(lin)))


def stage_probe(enc, dls, n_per_class=10, seeds=(0, 1, 2), pool='avg', folds=5) -> dict:
    """Best-stage kNN and linear probe of `enc` with `n_per_class` labels per class, mean over label draws `seeds`.

    The stage is chosen by `best_stage` (stratified CV on the labelled items of each draw); the test set is read only to
    score the chosen stage. `per_stage_*` (test accuracy of every stage, mean over draws) is a diagnostic, never a choice."""
    trf, trl = get_stage_embeddings(enc, dls.train, 'all', pool, progress=False)
    tef, tel = get_stage_embeddings(enc, dls.valid, 'all', pool, progress=False)
    n_cls = int(max(trl.max(), tel.max())) + 1
    out = {m: [] for m in ('knn', 'linear', 'knn_stage', 'linear_stage')}
    per = {m: {s: [] for s in trf} for m in ('knn', 'linear')}
    for seed in seeds:
        idx = budget_indices(trl, n_per_class, seed)
        acc = dict(knn=lambda s: knn_accuracy(trf[s][idx], trl[idx], tef[s], tel, k=min(20, len(idx)), n_classes=n_cls, topk=(1,))['top1'],
                   linear=lambda s: linear_probe(trf[s][idx], trl[idx], tef[s], tel, seed=seed))
        for m in ('knn', 'linear'):
            for s in trf: per[m][s].append(acc[m](s))
            chosen, _ = best_stage({s: f[idx] for s, f in trf.items()}, trl[idx], m, folds, seed)
            out[m].append(per[m][chosen][-1]); out[f'{m}_stage'].append(int(chosen))
    res = {m: float(np.mean(out[m])) for m in ('knn', 'linear')}
    res.update({f'{m}_stage': out[f'{m}_stage'] for m in ('knn', 'linear')})
    res.update({f'per_stage_{m}': {str(s): float(np.mean(v)) for s, v in per[m].items()} for m in ('knn', 'linear')})
    return res


# --- command line
def add_common_args(p, name, seeds=False):
    "--seed, --threads and where `name`'s cells (`benchmarks/results/<name>_cells.json`), encoders and report go"
    if seeds: p.add_argument('--seeds', default='0,1,2', help='label draws (and training seeds) downstream')
    p.add_argument('--seed', type=int, default=0, help='pretraining seed')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--cells', default=f'benchmarks/results/{name}_cells.json')
    p.add_argument('--cache', default=f'benchmarks/cache/{name}', help='encoder files (gitignored)')
    p.add_argument('--out', default=f'benchmarks/results/{name}.md')

def start(a):
    "Set the torch threads; the load average and clock at the start, and the cells"
    torch.set_num_threads(a.threads)
    return os.getloadavg()[0], time.perf_counter(), Cells(a.cells)

def command(script, a):
    "The command line that re-runs `script` with the arguments `a` (paths of the cells, cache and report left out)"
    return f'python benchmarks/{script} ' + ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items()
                                                              if k not in ('cells', 'cache', 'out', 'report_only'))


# --- reporting
def md_table(rows, cols, names=None):
    "A GitHub markdown table of dicts `rows`, columns `cols` (headers `names`)"
    names = names or cols
    out = ['| ' + ' | '.join(names) + ' |', '|' + '---|' * len(cols)]
    return '\n'.join(out + ['| ' + ' | '.join(str(r.get(c, '')) for c in cols) + ' |' for r in rows])


def hardware(threads) -> str:
    "CPU cores, memory, Python, torch, GPU and torch threads of this run (every benchmark's machine line starts with it)"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    return (f"{os.cpu_count()}-core CPU, {mem:.0f} GiB, Python {platform.python_version()}, torch {torch.__version__}, {gpu}; "
            f"{threads} torch thread(s)")

def machine(load0, threads):
    return f"{hardware(threads)}; CPU shared with other jobs (load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)"


def pct(v): return f'{100*v:.1f}'
