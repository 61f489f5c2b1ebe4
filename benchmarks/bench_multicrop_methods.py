"""Multi-crop methods on the MNIST sample: SwAV and DINO (resnet10t) and DINO with a ViT body, pretrained on the 4,000
unlabelled training digits, then `label_efficiency` (kNN, linear probe, fine-tuning) against the same network from
scratch. Writes `benchmarks/results/multicrop_methods.md` (and `.csv`).

    python benchmarks/bench_multicrop_methods.py [--methods swav,dino,dino_vit] [--epochs N] [--threads 1] [--eval knn,linear,finetune]

Resumable: each pretraining saves the model and optimiser after every epoch and its encoder when done, each group of
label-efficiency rows its table, under `--cache` (default `~/.cache/self_supervised_fa/bench_multicrop`); a rerun with
the same settings goes on from there (a resumed run draws other random numbers than an uninterrupted one would).
`METHODS` holds each method's settings (the ones a method registry needs).
"""
import argparse, hashlib, json, os, platform, time, warnings
from pathlib import Path
import pandas as pd, torch
from fastai.learner import Learner
from fastai.callback.core import Callback
import fastai.callback.schedule
from self_supervised_fa.data import sample_dls, load_sample_df, write_csv_atomic
from self_supervised_fa.encoders import create_timm_body, save_encoder, load_encoder
from self_supervised_fa.evaluate import KNNMonitorCallback
from self_supervised_fa.cli import knn_monitor_dls
from self_supervised_fa.label_efficiency import label_efficiency
from self_supervised_fa.multicrop import small_dino_augs, small_swav_augs
from self_supervised_fa.swav import create_swav_model, SwAVCallback
from self_supervised_fa.dino import create_dino_model, DINOCallback

warnings.filterwarnings('ignore', message='ViewAugment: 1-channel')
VIT = dict(img_size=28, patch_size=4, dynamic_img_size=True)   # 28-px digits, 12-px local crops: 7x7 and 3x3 patches

# name -> arch, body keywords, model factory keywords, callback (a function of nothing), epochs, lr
METHODS = {
    'swav': dict(arch='resnet10t', body={}, epochs=20, lr=5e-3,
                 model=lambda body: create_swav_model(body, hidden_size=1024, projection_size=128, n_prototypes=100),
                 cb=lambda: SwAVCallback(small_swav_augs(28, global_scale=(0.3, 1.), local_scale=(0.1, 0.3), flip_p=0.))),
    'dino': dict(arch='resnet10t', body={}, epochs=20, lr=5e-3,
                 model=lambda body: create_dino_model(body, out_dim=4096, hidden_size=1024, bottleneck_size=128, bn=True),
                 cb=lambda: DINOCallback(small_dino_augs(28, flip_p=0.), momentum=0.99)),
    'dino_vit': dict(arch='vit_tiny_patch16_224', body=VIT, epochs=20, lr=1e-3,
                     model=lambda body: create_dino_model(body, out_dim=4096, hidden_size=1024, bottleneck_size=128),
                     cb=lambda: DINOCallback(small_dino_augs(28, flip_p=0.), momentum=0.99)),
}


def md_table(df):
    rows = [list(map(str, df.columns))] + [[str(v) for v in r] for r in df.itertuples(index=False)]
    return '\n'.join(['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0])] + ['| ' + ' | '.join(r) + ' |' for r in rows[1:]])


def machine(threads):
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return (f"{os.cpu_count()}-core CPU, {mem:.0f} GiB, Python {platform.python_version()}, torch {torch.__version__}, {gpu}, "
            f"{threads} torch thread(s); CPU shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end)")


def write_atomic(path, text):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp'); tmp.write_text(text); os.replace(tmp, path)


class EpochCheckpoint(Callback):
    "After every epoch: model + optimiser to `dir/ckpt.pth` (fastai's `save`), epoch, kNN history and seconds to `state.json`"
    order = 60   # after the Recorder and the kNN monitor
    def __init__(self, dir, mon, state): self.dir, self.mon, self.state = Path(dir), mon, state
    def before_epoch(self): self.t = time.time()
    def after_epoch(self):
        if self.epoch < self.state['epoch']: return   # an epoch skipped when resuming
        self.learn.save(self.dir/'ckpt', with_opt=True)
        self.state.update(epoch=self.epoch + 1, knn=list(self.mon.history), seconds=self.state['seconds'] + time.time() - self.t,
                          loss=self.state['loss'] + [round(float(self.recorder.values[-1][0]), 4)])
        write_atomic(self.dir/'state.json', json.dumps(self.state))


def settings_key(name, epochs, lr, bs, seed):
    m = METHODS[name]
    text = json.dumps(dict(name=name, arch=m['arch'], body=m['body'], epochs=epochs, lr=lr, bs=bs, seed=seed,
                           code=[m['model'].__code__.co_consts, m['cb'].__code__.co_consts]), default=str, sort_keys=True)
    return f"{name}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def pretrain(name, epochs, lr, bs, seed, cache):
    "Pretrain method `name` (resuming from `cache`); its encoder and a row of pretraining facts"
    m = METHODS[name]
    d = Path(cache)/settings_key(name, epochs, lr, bs, seed); d.mkdir(parents=True, exist_ok=True)
    enc_file, state_file = d/'encoder.safetensors', d/'state.json'
    state = json.loads(state_file.read_text()) if state_file.exists() else dict(epoch=0, knn=[], seconds=0., loss=[])
    body = create_timm_body(m['arch'], n_in=1, **m['body'])
    if not enc_file.exists():
        torch.manual_seed(seed)
        dls = sample_dls(valid_df=load_sample_df('test').sample(256, random_state=seed), bs=bs, seed=seed)
        mon = KNNMonitorCallback(knn_monitor_dls(seed=seed)); mon.history = list(state['knn'])
        learn = Learner(dls, m['model'](body), cbs=[m['cb'](), mon, EpochCheckpoint(d, mon, state)], path=d, model_dir='.')
        if state['epoch']: learn.load(d/'ckpt', with_opt=True); print(f"{name}: resuming after epoch {state['epoch']}", flush=True)
        with learn.no_bar(): learn.fit_one_cycle(epochs, lr, start_epoch=state['epoch'])
        save_encoder(learn.model.encoder, enc_file, recipe=dict(method=name, epochs=epochs, lr=lr, bs=bs))
        state = json.loads(state_file.read_text())
    else: body = load_encoder(enc_file, body=body)
    row = dict(method=name, arch=m['arch'], epochs=epochs, lr=lr, bs=bs, pretrain_s=round(state['seconds']),
               train_loss_first_last=f"{state['loss'][0]:.3f} -> {state['loss'][-1]:.3f}",
               knn_top1_per_epoch=' '.join(f'{v:.3f}' for v in state['knn']))
    return body, row   # the trained encoder (the model kept `body` as its encoder) or the one loaded from the cache


def evaluate_group(encoders, scratch, cache, key, **kw):
    "label_efficiency of `encoders` and their `scratch` twin (cached in `cache/key.csv`), with all labels added for kNN/linear"
    fn = Path(cache)/f'le-{key}.csv'
    if fn.exists(): return pd.read_csv(fn)
    budgets, methods, seed, all_labels = kw.pop('budgets'), kw.pop('methods'), kw['seed'], kw.pop('all_labels')
    dls = sample_dls(bs=256, seed=seed)
    df = label_efficiency(encoders, dls, budgets=budgets, scratch=scratch, methods=methods, progress=False, **kw) if budgets else None
    if all_labels and {'knn', 'linear'} & set(methods):
        full = label_efficiency(encoders, dls, budgets=[None], scratch=scratch, methods=tuple(m for m in methods if m != 'finetune'),
                                seed=seed, progress=False)
        df = full if df is None else pd.concat([df, full], ignore_index=True)
    write_csv_atomic(df, fn)
    return df


def targets(df):
    "The issue's targets, measured: kNN >= 95 % with all labels; each evaluation >= 15 points over scratch at 10 labels"
    rows = []
    for enc in [e for e in dict.fromkeys(df.encoder) if not e.startswith('from scratch')]:
        scratch = df[(df.encoder == df.loc[df.encoder == enc, 'scratch'].iloc[0])]
        mine = df[df.encoder == enc]
        k_all = mine.loc[mine.labels.astype(str) == 'all', 'knn_top1'] if 'knn_top1' in mine else pd.Series(dtype=float)
        if len(k_all): rows.append(dict(encoder=enc, target='kNN top-1, all labels >= 95 %', measured=f"{100 * k_all.iloc[0]:.1f} %",
                                        verdict='met' if k_all.iloc[0] >= 0.95 else f"missed by {95 - 100 * k_all.iloc[0]:.1f} pts"))
        for col in ('knn_top1', 'linear', 'finetune'):
            a = mine.loc[mine.labels.astype(str) == '10', col] if col in mine else pd.Series(dtype=float)
            b = scratch.loc[scratch.labels.astype(str) == '10', col] if col in scratch else pd.Series(dtype=float)
            if len(a) and len(b) and pd.notna(a.iloc[0]):
                gain = 100 * (a.iloc[0] - b.iloc[0])
                rows.append(dict(encoder=enc, target=f"{col} at 10 labels/class >= 15 pts over scratch", measured=f"{100 * a.iloc[0]:.1f} vs {100 * b.iloc[0]:.1f} % (+{gain:.1f})",
                                 verdict='met' if gain >= 15 else f"missed by {15 - gain:.1f} pts"))
    return pd.DataFrame(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', default=','.join(METHODS))
    p.add_argument('--epochs', type=int, default=None, help='pretraining epochs (default: per method, METHODS)')
    p.add_argument('--lr', type=float, default=None, help='pretraining learning rate (default: per method)')
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--labels', default='10,100')
    p.add_argument('--ft-epochs', type=int, default=10)
    p.add_argument('--eval', default='knn,linear,finetune', help="evaluations of label_efficiency; 'none': pretraining only")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--cache', default=str(Path.home()/'.cache/self_supervised_fa/bench_multicrop'))
    p.add_argument('--out', default='benchmarks/results/multicrop_methods.md')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    names = [m for m in a.methods.split(',') if m]
    if bad := [m for m in names if m not in METHODS]: raise SystemExit(f"unknown methods {bad}: choose from {list(METHODS)}")
    encoders, rows = {}, []
    for name in names:
        epochs, lr = a.epochs or METHODS[name]['epochs'], a.lr or METHODS[name]['lr']
        encoders[name], row = pretrain(name, epochs, lr, a.bs, a.seed, a.cache)
        rows.append(row); print(row, flush=True)
    pre = pd.DataFrame(rows)
    cmd = 'python benchmarks/bench_multicrop_methods.py ' + ' '.join(f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items()
                                                                    if k not in ('out', 'cache') and v is not None)
    text = f"## Multi-crop methods: SwAV and DINO (MNIST sample)\n\nMachine: {machine(a.threads)}.\n\nCommand: `{cmd}`\n\n"
    text += f"### Pretraining (4,000 unlabelled images; kNN monitor: 20 labelled images per class as the bank, 200 test queries)\n\n{md_table(pre)}\n"
    if a.eval != 'none':
        t, tables = time.time(), []
        kw = dict(budgets=[int(b) for b in a.labels.split(',') if b], methods=tuple(a.eval.split(',')), seed=a.seed,
                  ft_epochs=a.ft_epochs, all_labels=True)
        for arch in dict.fromkeys(METHODS[n]['arch'] for n in names):   # one scratch twin per architecture (and its body keywords)
            group = [n for n in names if METHODS[n]['arch'] == arch]
            torch.manual_seed(a.seed)
            scratch = create_timm_body(arch, n_in=1, **METHODS[group[0]]['body'])
            key = hashlib.sha1(json.dumps([settings_key(n, a.epochs or METHODS[n]['epochs'], a.lr or METHODS[n]['lr'], a.bs, a.seed)
                                           for n in group] + [vars(a)[k] for k in ('labels', 'ft_epochs', 'eval')]).encode()).hexdigest()[:10]
            df = evaluate_group({n: encoders[n] for n in group}, scratch, a.cache, key, **kw)
            df['encoder'] = df.encoder.replace({'from scratch': f'from scratch ({arch})'})
            df['scratch'] = f'from scratch ({arch})'
            tables.append(df)
        df = pd.concat(tables, ignore_index=True)
        write_csv_atomic(df, Path(a.out).with_suffix('.csv'))
        pct = df.drop(columns='scratch')
        for c in ('knn_top1', 'linear', 'finetune'):
            if c in pct: pct[c] = (pct[c] * 100).map(lambda v: '' if pd.isna(v) else f'{v:.1f}')
        text += f"\n### Test accuracy (%) on the 1,000 test images ({time.time() - t:.0f} s for this table when not cached)\n\n{md_table(pct)}\n"
        tg = targets(df)
        if len(tg): text += f"\n### Against the targets (issue 11)\n\n{md_table(tg)}\n"
    write_atomic(a.out, text)
    print(text)


if __name__ == '__main__': main()
