"""Fine-tuning with and without augmentation of the labelled batches (`label_efficiency(ft_aug=)`), for encoders that
`bench_label_efficiency.py` pretrained and their from-scratch twin, at 10 and 100 labels per class.

The protocol is `label_efficiency`'s fine-tuning (the whole network at one learning rate from the first epoch, batches
of 32, 1e-3 pretrained / 2e-3 from scratch) on the sample's 4,000 training digits (labels drawn per class) and 1,000
test digits; only `ft_aug` and the number of epochs change. Each (encoder, augmentation, epochs, label draw) is a cell
cached in `--cells`, so an interrupted run resumes. The encoders come from `--cache` (the label-efficiency cache):
run the label-efficiency command for a missing one first (this script says which).

    python benchmarks/bench_finetune_aug.py [--encoders "simclr (e40),moco_v2 (e40)"] [--ft-epochs 10,30] [--seeds 0,1,2]
"""
import argparse, shlex, sys, time
from pathlib import Path
import pandas as pd
from bench_utils import add_common_args, start, md_table, machine, write_text_atomic
from self_supervised_fa.augment.views import ViewAugment
from self_supervised_fa.data.sample import sample_dls
from self_supervised_fa.encoders.files import load_encoder
from self_supervised_fa.evaluate.label_efficiency import label_efficiency, scratch_like, Probe, FineTune

AUGS = {'none': lambda: None,
        'crop+rotate': lambda: ViewAugment(28, crop_scale=(0.6, 1.), flip_p=0., jitter_p=0., grayscale_p=0., blur_p=0.,
                                           rotate=10., rotate_p=0.5)}
COLS = ['encoder', 'aug', 'ft_epochs', 'labels', 'test accuracy %', 'n', 'gain from aug (pts)']
AUG_TEXT = {'none': 'the labelled digits as they are',
            'crop+rotate': 'random resized crop of 60-100 % of the area back to 28 px (aspect 3/4-4/3), rotation by up to '
                           '10 degrees with probability 0.5; no flips (digits), no colour or blur'}


def encoder_file(cache, name):
    fn = Path(cache)/f"encoder_{name.replace(' ', '_')}.safetensors"
    if not fn.exists():
        method, _, variant = name.partition(' (')
        raise SystemExit(f"no encoder {fn}: pretrain it first, e.g. `python benchmarks/bench_label_efficiency.py --methods {method} "
                         f"--epochs 40 --variant {variant.rstrip(')') or 'TAG'} --append` (see benchmarks/results/label_efficiency.md "
                         f"for the command of each row)")
    return fn


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--encoders', default='simclr (e40),moco_v2 (e40)', help="rows of the label-efficiency report, comma-separated")
    p.add_argument('--augs', default='none,crop+rotate')
    p.add_argument('--labels', default='10,100')
    p.add_argument('--ft-epochs', default='10,30')
    p.add_argument('--seeds', default='0,1,2', help='label draws (and fine-tuning seeds)')
    add_common_args(p, 'finetune_aug')
    p.set_defaults(cache='benchmarks/cache/label_efficiency')
    a = p.parse_args()
    load0, t0, cells = start(a)
    names = [n.strip() for n in a.encoders.split(',') if n.strip()]
    files = {n: encoder_file(a.cache, n) for n in names}   # fail before any work
    bad = set(a.augs.split(',')) - set(AUGS)
    if bad: raise SystemExit(f'unknown --augs {sorted(bad)}: choose from {sorted(AUGS)}')
    budgets, epochs, seeds = ([int(v) for v in s.split(',')] for s in (a.labels, a.ft_epochs, a.seeds))
    dls, rows, secs = sample_dls(bs=256, seed=a.seed), [], []
    encs = {n: load_encoder(f) for n, f in files.items()}
    encs['from scratch'] = scratch_like(encs[names[0]], a.seed)   # the same random network label_efficiency uses
    for name, enc in encs.items():
        for aug in a.augs.split(','):
            for ep in epochs:
                for seed in seeds:
                    key = f'{name}|{aug}|{ep}|{seed}'
                    r = cells.get(key)
                    if r is None:
                        t = time.time()
                        scratch = name == 'from scratch'   # then fit_one_cycle at scratch_lr, as label_efficiency's twin
                        df = label_efficiency({} if scratch else {name: enc}, dls, budgets=budgets, scratch=enc if scratch else False, methods=('finetune',), seed=seed, progress=False, finetune=FineTune(epochs=ep, aug=AUGS[aug]()))
                        r = cells.put(key, dict(acc={str(b): float(v) for b, v in zip(df.labels, df.finetune)}, secs=round(time.time() - t)))
                        print(key, r, flush=True)
                    secs.append(r['secs'])
                    rows += [dict(encoder=name, aug=aug, ft_epochs=ep, seed=seed, labels=int(b), acc=v) for b, v in r['acc'].items()]
    write_report(a, pd.DataFrame(rows), names, load0, t0, secs)


def write_report(a, df, names, load0, t0, secs):
    g = df.groupby(['encoder', 'aug', 'ft_epochs', 'labels'], sort=False).acc
    s = pd.DataFrame({'mean': g.mean() * 100, 'std': g.std(ddof=0) * 100, 'n': g.size()}).reset_index()
    s['test accuracy %'] = [f"{m:.2f} ± {d:.2f}" for m, d in zip(s['mean'], s['std'])]
    base = s[s.aug == 'none'].set_index(['encoder', 'ft_epochs', 'labels'])['mean']
    s['gain from aug (pts)'] = [('' if r.aug == 'none' else f"{r['mean'] - base[(r.encoder, r.ft_epochs, r.labels)]:+.2f}") for _, r in s.iterrows()]
    cmd = 'python benchmarks/bench_finetune_aug.py ' + ' '.join(f'--{k.replace("_", "-")} {shlex.quote(str(v))}' for k, v in vars(a).items()
                                                            if k not in ('cells', 'cache', 'out'))
    top = s[(s.labels == 100) & (s.encoder != 'from scratch')].sort_values('mean')
    best = top.iloc[-1] if len(top) else None
    gains = s[s.aug != 'none'].assign(gain=lambda d: [d_['mean'] - base[(d_.encoder, d_.ft_epochs, d_.labels)] for _, d_ in d.iterrows()])
    readings = [f"- gain from augmenting, {enc}: {g.gain.min():+.2f} to {g.gain.max():+.2f} points over its {len(g)} settings"
                for enc, g in gains.groupby('encoder', sort=False)]
    sc = s[(s.encoder == 'from scratch') & (s.labels == 10)].sort_values('mean')
    if len(sc): readings.append(f"- the strongest from-scratch fine-tuning at 10 labels per class: {sc.iloc[-1]['mean']:.2f} % "
                                f"(aug {sc.iloc[-1].aug}, {sc.iloc[-1].ft_epochs} epochs)")
    verdict = '\n'.join(readings) + '\n\n' + ('' if best is None else (f"Best fine-tuning at 100 labels per class: {best.encoder}, aug {best.aug}, {best.ft_epochs} epochs, "
               f"{best['mean']:.2f} % (label-efficiency target >= 98 %: {'met' if best['mean'] >= 98 else 'missed'})."))
    text = (f"## Fine-tuning with augmented labelled batches\n\n"
            f"Machine: {machine(load0, a.threads)}.\n\nCommand: `{cmd}` ({len(secs)} cells, {sum(secs) / 60:.0f} min of "
            f"fine-tuning in all, summed over the cells; this invocation took {(time.perf_counter() - t0) / 60:.0f} min; finished cells "
            f"are cached in `{a.cells}`, and the load averages above are this invocation's)\n\n"
            f"`label_efficiency`'s fine-tuning of each encoder (pretrained: {', '.join(names)}, from `{a.cache}`; `from scratch`: "
            f"the same random network as there), with its labels drawn per class from the sample's 4,000 training digits, "
            f"scored on the 1,000 test digits; mean ± std over label draws (seeds {a.seeds}). Augmentations: "
            + '; '.join(f"`{k}`: {AUG_TEXT[k]}" for k in a.augs.split(',')) + ".\n\n"
            + md_table(s.to_dict('records'), COLS) + f"\n\n{verdict}\n")
    write_text_atomic(Path(a.out), text)
    print(text)


if __name__ == '__main__': main()
