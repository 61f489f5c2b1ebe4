"""Label efficiency on the MNIST sample: self-supervised pretraining vs the same network from scratch.

Pretrains `--arch` with each `--methods` on the 4,000 training images (labels unused), with `KNNMonitorCallback`
timed separately (its cost as a fraction of the epoch), then runs `label_efficiency` (weighted kNN, linear
probe, fine-tuning) at `--labels` per class and writes a markdown table to `--out`.

    python benchmarks/bench_label_efficiency.py [--methods simclr,rotnet] [--arch resnet10t] [--epochs N] [--threads 2]

Pretraining epochs and learning rates default to what `ssfa-demo` uses (`cli.DEFAULT_EPOCHS`, `cli.DEFAULT_LR`).
`--knn-all` adds kNN and linear probe with every training label (the usual kNN protocol: all 4,000 labels as the bank).
"""
import argparse, os, platform, time
from pathlib import Path
import pandas as pd, torch
from self_supervised_fa.cli import pretrain, available_methods, knn_monitor_dls, DEFAULT_EPOCHS, DEFAULT_LR
from self_supervised_fa.data import write_csv_atomic
from self_supervised_fa.data import sample_dls
from self_supervised_fa.evaluate import KNNMonitorCallback
from self_supervised_fa.label_efficiency import label_efficiency


class TimedKNNMonitor(KNNMonitorCallback):
    "KNNMonitorCallback that accumulates the seconds it spends"
    seconds = 0.0
    def after_validate(self):
        t = time.perf_counter(); super().after_validate(); self.seconds += time.perf_counter() - t


def md_table(df):
    "`df` as a GitHub markdown table (no tabulate dependency)"
    rows = [list(map(str, df.columns))] + [[str(v) for v in r] for r in df.itertuples(index=False)]
    return '\n'.join(['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0])] + ['| ' + ' | '.join(r) + ' |' for r in rows[1:]])


def machine():
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30
    return (f"{os.cpu_count()}-core CPU, {mem:.0f} GiB, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{gpu}; CPU shared with other jobs during the run (load average {os.getloadavg()[0]:.1f})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', default=','.join(available_methods()))
    p.add_argument('--arch', default='resnet10t')
    p.add_argument('--epochs', type=int, default=None, help='pretraining epochs (default: as ssfa-demo, per method)')
    p.add_argument('--lr', type=float, default=None, help='pretraining learning rate (default: as ssfa-demo, per method)')
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--labels', default='10,100')
    p.add_argument('--ft-epochs', type=int, default=10)
    p.add_argument('--eval', default='knn,linear,finetune')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--knn-all', type=int, default=1, help='1: also kNN/linear with all training labels')
    p.add_argument('--threads', type=int, default=os.cpu_count())
    p.add_argument('--out', default='benchmarks/results/label_efficiency.md')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    encoders, rows = {}, []
    for m in [m for m in a.methods.split(',') if m]:
        mon = TimedKNNMonitor(knn_monitor_dls(seed=a.seed))
        epochs = a.epochs or DEFAULT_EPOCHS.get(m, 10)
        enc, learn, secs = pretrain(m, a.arch, epochs=epochs, lr=a.lr, bs=a.bs, seed=a.seed, knn_monitor=mon,
                                    show_progress=False)
        encoders[m] = enc
        rows.append(dict(method=m, arch=a.arch, epochs=epochs, lr=a.lr or DEFAULT_LR.get(m), pretrain_s=round(secs), knn_monitor_s=round(mon.seconds, 1),
                         knn_monitor_overhead=f"{mon.seconds / max(secs - mon.seconds, 1e-9):.1%}",
                         knn_top1_per_epoch=' '.join(f'{v:.3f}' for v in mon.history)))
        print(rows[-1], flush=True)
    t = time.time()
    df = label_efficiency(encoders, sample_dls(bs=256, seed=a.seed), budgets=[int(b) for b in a.labels.split(',')],
                          ft_epochs=a.ft_epochs, methods=tuple(a.eval.split(',')), seed=a.seed, progress=False)
    if a.knn_all:
        full = label_efficiency(encoders, sample_dls(bs=256, seed=a.seed), budgets=[None], methods=('knn', 'linear'),
                                seed=a.seed, progress=False)
        df = pd.concat([df, full], ignore_index=True)
    eval_s = time.time() - t
    print(df.to_string(index=False), flush=True)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(df, out.with_suffix('.csv'))
    pct = df.copy()
    for c in ('knn_top1', 'linear', 'finetune'):
        if c in pct: pct[c] = (pct[c] * 100).map(lambda v: f'{v:.1f}')
    cmd = 'python benchmarks/bench_label_efficiency.py ' + ' '.join(
        f'--{k.replace("_", "-")} {v}' for k, v in vars(a).items() if k != 'out' and v is not None)
    text = (f"## Label efficiency ({a.arch}, MNIST sample)\n\nMachine: {machine()}.\n\nCommand: `{cmd}`\n\n"
            f"### Pretraining (4,000 unlabelled images)\n\n{md_table(pd.DataFrame(rows))}\n\n"
            f"### Test accuracy (%) on the 1,000 test images ({eval_s:.0f} s for this table)\n\n"
            f"{md_table(pct)}\n")
    tmp = out.with_name(out.name + '.tmp'); tmp.write_text(text); os.replace(tmp, out)
    print(text)


if __name__ == '__main__': main()
