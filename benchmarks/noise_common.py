"""Shared by bench_noise_map.py and bench_suspects.py: the cached SimCLR encoder, JSON result cache, machine line."""
import json, os, platform, time
from pathlib import Path
import torch

WORK = Path(os.path.expanduser('~/.cache/self_supervised_fa/bench_noise'))


def ssl_encoder(work=WORK, epochs=20, lr=5e-3, bs=128, seed=0, arch='resnet10t'):
    "SimCLR encoder pretrained once on the sample's 4,000 unlabelled training digits (the README's settings), cached"
    from self_supervised_fa.cli import pretrain
    from self_supervised_fa.encoders import save_encoder, load_encoder
    fn = Path(work)/f'simclr_{arch}_e{epochs}_lr{lr}_bs{bs}_s{seed}.safetensors'
    if fn.exists(): return load_encoder(fn), fn
    enc, _, secs = pretrain('simclr', arch, epochs=epochs, lr=lr, bs=bs, seed=seed, knn_monitor=False, show_progress=False)
    save_encoder(enc, fn, recipe=dict(method='simclr', arch=arch, epochs=epochs, lr=lr, bs=bs, seed=seed,
                                       seconds=round(secs), threads=torch.get_num_threads()))
    print(f'pretrained {fn.name} in {secs:.0f} s', flush=True)
    return enc, fn


def cached(fn, compute):
    "Result of `compute()` (a dict) kept as JSON in `fn`, written atomically: a re-run skips finished cells"
    fn = Path(fn)
    if fn.exists(): return json.loads(fn.read_text())
    t = time.time(); r = compute(); r['seconds'] = round(time.time() - t, 1)
    fn.parent.mkdir(parents=True, exist_ok=True)
    tmp = fn.with_name(f'.{fn.name}.tmp'); tmp.write_text(json.dumps(r)); os.replace(tmp, fn)
    return r


def machine(threads):
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return (f"{os.cpu_count()}-core CPU, {mem:.0f} GiB, Python {platform.python_version()}, torch {torch.__version__}, {gpu}; "
            f"{threads} torch thread(s); load average {os.getloadavg()[0]:.1f} when the table was written")


def write_atomic(path, text):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp'); tmp.write_text(text); os.replace(tmp, path)
    return path
