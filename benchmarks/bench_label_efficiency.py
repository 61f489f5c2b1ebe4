"""Label efficiency on the MNIST sample: every pretraining method against the same network from scratch.

Pretrains `--arch` with each of `--methods` (built by `methods.method_learner`, the table the CLI uses) on the 4,000
training images (labels unused) for the same number of epochs, with `KNNMonitorCallback` timed separately, then
evaluates every encoder and a from-scratch twin:
- weighted kNN (top-1) and linear probe (logistic regression on frozen features) at `--labels` per class and with
  every training label;
- the Barlow Twins article's protocol: linear probe with 1 %, 10 % and 100 % of the training labels;
- fine-tuning of the whole network at `--labels` per class (`label_efficiency`'s defaults).
Resumable: each encoder, its pretraining record and each evaluation are cached in `--cache` (delete a file to redo it).

    python benchmarks/bench_label_efficiency.py [--methods simclr,byol] [--arch resnet10t] [--epochs 20] [--threads 1] [--append]

Writes a markdown report (tables and the issue targets) to `--out` and the accuracy table as CSV beside it.
`--append` adds `--methods` to an earlier report without re-running its methods (whose cache may be gone): its rows, their
numbers and its command and machine are kept as they are under their run number, the new rows get the next number, and the
from-scratch baseline is the earlier run's (the same `--arch` and `--seed` give the same from-scratch network).
"""
import argparse, json, os, platform, re, shlex, sys, time
from pathlib import Path
import pandas as pd, torch
from fastai.torch_core import set_seed
from bench_utils import locked, write_text_atomic
from self_supervised_fa.app.demo import knn_monitor_dls
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.core.io import write_csv_atomic
from self_supervised_fa.encoders.files import save_encoder, load_encoder
from self_supervised_fa.evaluate.monitor import KNNMonitorCallback
from self_supervised_fa.evaluate.label_efficiency import label_efficiency, scratch_like, Probe, FineTune
from self_supervised_fa.app.registry import METHODS, method_learner
from self_supervised_fa.core.precision import resolve_precision, PRECISIONS

SIAMESE = [m for m, v in METHODS.items() if v.kind == 'siamese']


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
            f"{gpu}, {torch.get_num_threads()} torch thread(s)")


def write_json(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1))


def row_name(m, a): "Method `m`'s name in the tables: with `--variant`'s tag if given"; return f'{m} ({a.variant})' if a.variant else m
def method_of(name): "The method of a row name"; return name.split(' (')[0]


def pretrain(m, a, cache):
    "The method's encoder and pretraining record, from the cache or trained now"
    key = row_name(m, a).replace(' ', '_')
    fn, rec = cache/f'encoder_{key}.safetensors', cache/f'pretrain_{key}.json'
    if fn.exists() and rec.exists(): return load_encoder(fn), json.loads(rec.read_text())
    set_seed(a.seed, reproducible=True)
    dls = sample_dls(valid_df=load_sample_df('test').sample(256, random_state=a.seed), bs=a.bs, seed=a.seed)
    kw = {k: json.loads(v) for k, v in (('model_kwargs', a.model_kwargs), ('callback_kwargs', a.callback_kwargs),
                                        ('views_kwargs', a.views_kwargs)) if v}
    learn = method_learner(m, dls, a.arch, precision=a.precision, **kw)
    mon = TimedKNNMonitor(knn_monitor_dls(seed=a.seed)); learn.add_cb(mon)
    epochs, lr = a.epochs or METHODS[m].epochs, a.lr or METHODS[m].lr
    start = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    secs = time.time() - start
    row = dict(method=row_name(m, a), arch=a.arch, epochs=epochs, lr=lr, precision=resolve_precision(a.precision), pretrain_s=round(secs), knn_monitor_s=round(mon.seconds, 1),
               final_loss=round(float(learn.recorder.values[-1][0]), 4),
               knn_top1_per_epoch=' '.join(f'{v:.3f}' for v in mon.history), load_average=round(os.getloadavg()[0], 1))
    save_encoder(learn.model.encoder, fn, recipe=dict(method=m, epochs=epochs, lr=lr, bs=a.bs, seed=a.seed, precision=resolve_precision(a.precision)))
    write_json(rec, row)
    return learn.model.encoder, row


def evaluate(name, enc, a, cache, ref=None):
    "Every evaluation of one encoder, cached; the from-scratch twin is evaluated beside `ref` (label_efficiency's own scratch recipe)"
    fn = cache/f'eval_{name.replace(" ", "_")}.json'
    if fn.exists(): return json.loads(fn.read_text())
    dls, t = sample_dls(bs=256, seed=a.seed), time.time()
    encs, scratch = ({name: enc}, False) if ref is None else ({'ref': ref}, enc)
    df = pd.concat([
        label_efficiency(encs, dls, budgets=[int(b) for b in a.labels.split(',')], scratch=scratch, seed=a.seed, methods=('knn', 'linear', 'finetune'), progress=False, finetune=FineTune(epochs=a.ft_epochs, precision=a.precision)),
        label_efficiency(encs, dls, budgets=[0.01, 0.1, None], scratch=scratch, seed=a.seed, methods=('knn', 'linear'),
                         progress=False)], ignore_index=True)
    df = df[df.encoder == name].assign(eval_s=round(time.time() - t))
    rows = json.loads(df.to_json(orient='records'))
    write_json(fn, rows)
    return rows


def targets(acc, methods):
    "The issue targets (siamese core: kNN >= 95 % with all labels; best linear@10 >= 92 %, best fine-tune@100 >= 98 %; +15 points)"
    def g(enc, lab, col):
        v = acc[(acc.encoder == enc) & (acc.labels.astype(str) == str(lab))][col]
        return round(float(v.iloc[0]) * 100, 2) if len(v) else float('nan')   # counts over 1,000 items: 950/1000 is 0.94999999 in float32
    scratch10 = g('from scratch', 10, 'finetune')
    random10 = max(g('from scratch', 10, c) for c in ('knn_top1', 'linear'))   # the random-weights encoder's best probe
    rows = []
    for m in methods:
        knn, lin10, ft100 = g(m, 'all', 'knn_top1'), g(m, 10, 'linear'), g(m, 100, 'finetune')
        best10 = max(g(m, 10, c) for c in ('knn_top1', 'linear', 'finetune'))
        rows.append(dict(method=m, knn_all=f'{knn:.1f}', knn_all_ge_95='met' if knn >= 95 else 'missed',
                         linear_10=f'{lin10:.1f}', finetune_100=f'{ft100:.1f}',
                         best_at_10_minus_scratch=f'{best10 - scratch10:+.1f}', plus_15='met' if best10 - scratch10 >= 15 else 'missed',
                         best_at_10_minus_random_probe=f'{best10 - random10:+.1f}'))
    t = pd.DataFrame(rows)
    best_lin = max(methods, key=lambda m: g(m, 10, 'linear')); best_ft = max(methods, key=lambda m: g(m, 100, 'finetune'))
    lines = [f"- best linear probe at 10 labels per class: {best_lin}, {g(best_lin, 10, 'linear'):.1f} % (target >= 92 %: "
             f"{'met' if g(best_lin, 10, 'linear') >= 92 else 'missed'})",
             f"- best fine-tuning at 100 labels per class: {best_ft}, {g(best_ft, 100, 'finetune'):.1f} % (target >= 98 %: "
             f"{'met' if g(best_ft, 100, 'finetune') >= 98 else 'missed'})",
             f"- from scratch, fine-tuned at 10 labels per class: {scratch10:.1f} % (the baseline of the +15 points column: each "
             "method's best of kNN, linear probe and fine-tuning at 10 labels per class)",
             f"- best_at_10_minus_random_probe (no target, a check): the same best against the from-scratch (random-weights) "
             f"encoder's best kNN or linear probe at 10 labels per class, {random10:.1f} %: how much pretraining adds over random features"]
    return md_table(t) + '\n\n' + '\n'.join(lines)


def read_md_table(text, heading):
    "The first markdown table after the line `heading` of `text`, as a DataFrame of strings"
    lines = text.split('\n')
    i = next(i for i, l in enumerate(lines) if l.strip() == heading)
    rows = []
    for l in lines[i + 1:]:
        if l.startswith('|'): rows.append([c.strip() for c in l.strip().strip('|').split('|')])
        elif rows: break
    return pd.DataFrame(rows[2:], columns=rows[0])


def read_runs(text):
    "The runs (machine, command) of an earlier report: `Run N: ...` lines, or the single `Machine:`/`Command:` pair of a one-run report"
    runs = re.findall(r'^- run (\d+): (.*?); command `(.*)`$', text, flags=re.M)
    if runs: return [dict(run=int(n), machine=mach, command=cmd) for n, mach, cmd in runs]
    mach = re.search(r'^Machine: (.*?); the CPU was shared', text, flags=re.M).group(1)
    return [dict(run=1, machine=mach, command=re.search(r'^Command: `(.*)`$', text, flags=re.M).group(1))]


def earlier(out):
    "The runs, pretraining table and accuracy table of the report `out` (and its CSV), every row marked with its run"
    text = out.read_text()
    runs, pre = read_runs(text), read_md_table(text, '### Pretraining (4,000 unlabelled images, the same body and epochs budget for every method)')
    acc = pd.read_csv(out.with_suffix('.csv'), dtype={'labels': str})
    for df in (pre, acc):
        if 'run' not in df: df.insert(0, 'run', runs[0]['run'])
    return runs, pre, acc


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--methods', default=','.join(SIAMESE + ['rotnet']))
    p.add_argument('--arch', default='resnet10t')
    p.add_argument('--epochs', type=int, default=None, help='pretraining epochs for every method (default: each method\'s, methods.METHODS)')
    p.add_argument('--lr', type=float, default=None, help='pretraining learning rate for every method (default: each method\'s)')
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--precision', default='auto', choices=PRECISIONS, help="pretraining and fine-tuning precision (the library's default, 'auto'; the rows before issue 28 ran in fp32)")
    p.add_argument('--labels', default='10,100')
    p.add_argument('--ft-epochs', type=int, default=10)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--cache', default='benchmarks/cache/label_efficiency')
    p.add_argument('--out', default='benchmarks/results/label_efficiency.md')
    p.add_argument('--variant', default=None, help="a tag for the rows of this run, 'method (tag)': e.g. other --model-kwargs")
    p.add_argument('--model-kwargs', default=None, help='JSON: model settings over the registry\'s (e.g. \'{"n_prototypes": 30}\')')
    p.add_argument('--callback-kwargs', default=None, help='JSON: callback settings over the registry\'s (e.g. \'{"momentum": 0.996}\')')
    p.add_argument('--views-kwargs', default=None, help='JSON: settings of a multi-crop method\'s view preset (e.g. \'{"n_local": 0}\')')
    p.add_argument('--append', action='store_true', help="add --methods to --out's earlier report and CSV, keeping its rows")
    p.add_argument('--report-only', action='store_true', help="write --out again from its CSV and tables, running nothing")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cache = Path(a.cache); cache.mkdir(parents=True, exist_ok=True)
    methods = [m for m in a.methods.split(',') if m]
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    names = [row_name(m, a) for m in methods]
    def read_earlier():   # the report so far; read again under the lock before writing: other --append runs may have added to it
        runs, pre0, acc0 = earlier(out) if a.append else ([], pd.DataFrame(), pd.DataFrame())
        if a.append and (set(names) & set(acc0.encoder)): raise SystemExit(f'--append: {sorted(set(names) & set(acc0.encoder))} already in {out}')
        return runs, pre0, acc0
    if a.report_only:   # the report written again from its CSV and tables (e.g. after a change to `targets`), no new run
        with locked(out): write_report(out, a, *earlier(out), [], pd.DataFrame())
        return
    read_earlier()   # fail before pretraining
    encoders, pre = {}, []
    for m in methods:
        encoders[row_name(m, a)], row = pretrain(m, a, cache); pre.append(row); print(row, flush=True)
    if not a.append:
        torch.manual_seed(a.seed)
        encoders['from scratch'] = scratch_like(encoders[names[0]], a.seed)
    ref = encoders[names[0]]
    acc = pd.DataFrame([r for name, enc in encoders.items()
                        for r in evaluate(name, enc, a, cache, ref=ref if name == 'from scratch' else None)])
    with locked(out):
        write_report(out, a, *read_earlier(), pre, acc)


def write_report(out, a, runs, pre0, acc0, pre, acc):
    "Add this run's pretraining rows `pre` and accuracy rows `acc` to the earlier report's as run max + 1; write the CSV and the report"
    run = max([r['run'] for r in runs], default=0) + 1
    if len(acc):
        pre, acc = [{'run': run, **r} for r in pre], acc.assign(run=run)
        acc = pd.concat([acc0, acc[['run', 'encoder', 'labels', 'n_train', 'knn_top1', 'linear', 'finetune', 'eval_s']]], ignore_index=True)
        pre = pd.concat([pre0, pd.DataFrame(pre).astype(str)], ignore_index=True)
        if 'precision' in pre: pre['precision'] = pre['precision'].fillna('fp32')   # the runs before issue 28 had no other
    else: pre, acc = pre0, acc0   # --report-only
    write_csv_atomic(acc, out.with_suffix('.csv'))
    pct = acc.copy()
    for c in ('knn_top1', 'linear', 'finetune'): pct[c] = (pct[c] * 100).map(lambda v: '' if pd.isna(v) else f'{v:.1f}')
    cmd = 'python benchmarks/bench_label_efficiency.py ' + ' '.join(
        f'--{k.replace("_", "-")} {shlex.quote(str(v))}' for k, v in vars(a).items() if k not in ('out', 'cache', 'append', 'report_only') and v is not None)
    if len(acc) > len(acc0): runs = runs + [dict(run=run, machine=machine(), command=cmd + (' --append' if a.append else ''))]
    done = list(dict.fromkeys(acc.encoder))
    siamese = [m for m in done if method_of(m) in METHODS and METHODS[method_of(m)].kind == 'siamese']
    run_lines = '\n'.join(f"- run {r['run']}: {r['machine']}; command `{r['command']}`" for r in runs)
    text = (f"## Label efficiency ({a.arch}, MNIST sample)\n\nRuns (each row's run in its `run` column; the CPU was shared "
            f"with other jobs, the load average at the end of each pretraining in its row):\n\n{run_lines}\n\n"
            f"### Pretraining (4,000 unlabelled images, the same body and epochs budget for every method)\n\n"
            f"{md_table(pre)}\n\n"
            f"### Test accuracy (%) on the 1,000 test images\n\nlabels: per class (10, 100), a fraction of the 4,000 "
            f"training labels (1 %, 10 %; the Barlow Twins protocol) or all of them; fine-tuning at the per-class budgets.\n\n"
            f"{md_table(pct)}\n\n### Against the targets\n\n{targets(acc, siamese) if siamese else ''}\n")
    write_text_atomic(out, text)
    print(text)


if __name__ == '__main__': main()
