"""Suspect ranking on a small folder: 500 sample digits (50 per class) with 30 % flipped labels, the README's recipe
(`ssfa pretrain`, then `pseudo-label` and `suspects` with that encoder) through the workflow functions the CLI runs,
and the evidence for `label_trust`'s threshold.

What limits the ROC AUC of "this label is wrong" at this size: the pretraining length, the folds' training length
(`pseudo-label --epochs`), the kNN vote's k and the blend weight of the out-of-fold probabilities. Every pretraining
and out-of-fold run is cached under --work (a re-run only ranks again). `--trust` adds the sweep behind
`label_trust(min_kappa=0.3)`: out-of-fold probabilities of models of every strength on scikit-learn's digits.

    python benchmarks/bench_suspects_small.py --seeds 0 1 --settings 10:5 30:5 30:15 --trust
"""
import argparse, os, shutil, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch
from sklearn.metrics import roc_auc_score
from noise_common import machine, write_atomic, md_table
from self_supervised_fa.data.sample import load_sample_df, get_sample_data, subsample_per_class
from self_supervised_fa.labels.noise import add_label_noise
from self_supervised_fa.labels.suspects import rank_suspects, KNNVote, label_trust, suspicion, label_signals
import self_supervised_fa.app.workflow as W
from self_supervised_fa.app.options import FitOptions, FolderOptions

WORK = Path(os.path.expanduser('~/.cache/self_supervised_fa/bench_suspects_small'))
warnings.filterwarnings('ignore', category=UserWarning)


def make_folder(root, n_per_class, noise, seed):
    "A competition folder: images/ (copies of the sample's PNGs) and train.csv with the noisy labels; the truth beside it"
    root = Path(root)
    trn = add_label_noise(subsample_per_class(load_sample_df('train'), n_per_class, seed), noise, seed=seed)
    if not (root/'train.csv').exists():
        (root/'images').mkdir(parents=True, exist_ok=True)
        src = get_sample_data()/'images'
        for i in trn.image_id:
            if not (root/'images'/f'{i}.png').exists(): shutil.copyfile(src/f'{i}.png', root/'images'/f'{i}.png')
        trn[['image_id', 'label_clean', 'is_noisy']].to_csv(root/'truth.csv', index=False)
        trn[['image_id', 'label']].to_csv(root/'train.csv', index=False)
    return trn.reset_index(drop=True)


def auc(table, trn):
    wrong = table.image_id.map(dict(zip(trn.image_id, trn.is_noisy))).astype(bool)
    return float(roc_auc_score(wrong, table.score))


def run(seed, a, work):
    root = work/f'folder_n{a.n_per_class}_noise{a.noise}_s{seed}'
    trn = make_folder(root/'data', a.n_per_class, a.noise, seed)
    fo = FolderOptions(size=a.size, progress=False)
    rows = []
    for pe in dict.fromkeys(p for p, _ in a.settings):
        enc = root/f'pre_e{pe}'/'encoder_simclr.safetensors'
        t = time.time()
        if not enc.exists(): W.pretrain_folder(root/'data', root/f'pre_e{pe}', 'simclr', a.arch, fit=FitOptions(epochs=pe, seed=seed), folder=fo)
        print(f'seed {seed}: pretrain {pe} epochs {time.time() - t:.0f} s', flush=True)
        d = W.prepare(root/'data', folder=fo)
        d.items = d.items.set_index('image_id').loc[trn.image_id].reset_index()   # the truth's order
        feats = W._embed_items(d, W.settings(d, enc, fo), enc, 64, 0, False)
        for oe in [o for p, o in a.settings if p == pe]:
            out = root/f'pre_e{pe}_oof_e{oe}'
            t = time.time()
            oof = pd.read_csv(out/'oof.csv', dtype={'image_id': str}) if (out/'oof.csv').exists() else \
                W.pseudo_label_folder(root/'data', out, encoder=enc, folds=5, with_test=False, fit=FitOptions(epochs=oe, seed=seed), folder=fo)
            print(f'seed {seed}: oof {oe} epochs {time.time() - t:.0f} s', flush=True)
            acc = float((oof.set_index('image_id').loc[trn.image_id].pred.astype(int).to_numpy() == trn.label_clean.to_numpy()).mean())
            base = dict(seed=seed, pretrain_epochs=pe, oof_epochs=oe, oof_acc_vs_clean=acc)
            t1 = rank_suspects(trn, oof)
            rows.append(dict(base, source='out-of-fold', k='-', weight='1', auc=auc(t1, trn), kappa=t1.attrs['trust']['kappa']))
            for k in a.ks:
                vote = KNNVote(k=None if k == 'auto' else int(k), seed=seed)
                if oe == [o for p, o in a.settings if p == pe][0]:   # the kNN vote alone does not depend on the folds
                    t = rank_suspects(trn, feats=feats, vote=vote)
                    rows.append(dict(base, oof_epochs='-', oof_acc_vs_clean=np.nan, source='kNN vote', k=str(k), weight='0',
                                     auc=auc(t, trn), kappa=t.attrs['trust']['kappa']))
                for w in a.weights:
                    t = rank_suspects(trn, oof, feats, weight=None if w == 'auto' else float(w), vote=vote)
                    rows.append(dict(base, source='both', k=str(k), weight=w if w == 'auto' else f'{float(w):g}', auc=auc(t, trn),
                                     kappa=t.attrs['trust']['kappa'], used_weight=t.attrs['weight']))
    return rows


def trust_sweep():
    "(kappa, ROC AUC, accuracy of the suggestions) of out-of-fold probabilities of weak to good models on sklearn's digits"
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    X, y0 = load_digits(return_X_y=True)
    rng, rows = np.random.default_rng(0), []
    for n in (500, 1797):
        for noise in (0.1, 0.3, 0.5):
            idx = rng.choice(len(X), n, replace=False); xs, yc = X[idx], y0[idx]
            flip = rng.random(n) < noise; y = yc.copy(); y[flip] = (yc[flip] + rng.integers(1, 10, flip.sum())) % 10
            for d in (1, 2, 3, 5, 10, 30):
                for c in (1e-4, 1e-2, 1.0):
                    p = cross_val_predict(make_pipeline(PCA(d, random_state=0), LogisticRegression(C=c, max_iter=300)), xs, y,
                                          cv=StratifiedKFold(5, shuffle=True, random_state=0), method='predict_proba')
                    tr = label_trust(p, y)
                    rows.append(dict(n=n, noise=noise, components=d, C=c, kappa=tr['kappa'], separability=tr['separability'],
                                     auc=roc_auc_score(y != yc, suspicion(label_signals(p, y))), suggestion_acc=float((p.argmax(1) == yc).mean())))
    return pd.DataFrame(rows)


def k_sweep(seeds=range(5), noise=0.3):
    "ROC AUC of the kNN vote alone for k = 3..40 and `k=None`, on scikit-learn's digits (pixels), 5 to 100 items a class"
    from sklearn.datasets import load_digits
    X, y0 = load_digits(return_X_y=True)
    res = []
    for per in (5, 10, 20, 50, 100):
        for seed in seeds:
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.choice(np.flatnonzero(y0 == c), per, replace=False) for c in range(10)])
            yc = y0[idx]; flip = rng.random(len(idx)) < noise
            items = pd.DataFrame({'image_id': [f'i{i}' for i in range(len(idx))], 'label': np.where(flip, (yc + rng.integers(1, 10, len(idx))) % 10, yc)})
            for k in (3, 5, 10, 20, 40, None):
                t = rank_suspects(items, feats=X[idx], vote=KNNVote(k=k, seed=seed, n_folds=min(10, per))).set_index('image_id')
                res.append(dict(per_class=per, k='None (auto)' if k is None else str(k), seed=seed, auc=roc_auc_score(flip, t.score.loc[items.image_id])))
    return pd.DataFrame(res).pivot_table(index='per_class', columns='k', values='auc', sort=False)


def report(df, a, load0, trust):
    f4 = lambda v: f'{v:.4f}'
    acc = df[df.source == 'out-of-fold'].groupby(['pretrain_epochs', 'oof_epochs', 'seed']).oof_acc_vs_clean.first().unstack().map(lambda v: f'{100 * v:.1f}')
    acc.columns = [f'seed {s}' for s in acc.columns]
    df = df.astype({'oof_epochs': str})
    keys = ['pretrain_epochs', 'oof_epochs', 'source', 'k', 'weight']
    piv = df.pivot_table(index=keys, columns='seed', values='auc', sort=False)
    piv.columns = [f'seed {s}' for s in piv.columns]
    piv = piv.assign(mean=piv.mean(1))
    pick = lambda k, w: piv.xs(('both', k, w), level=['source', 'k', 'weight'])['mean']
    m = lambda pe, oe: f"{pick('auto', 'auto').loc[(int(pe), oe)]:.3f}"
    default = pd.DataFrame({'before (k 20, weight 0.5)': pick('20', '0.5'), 'now (k auto, weight auto)': pick('auto', 'auto'),
                            'out-of-fold alone': piv.xs(('out-of-fold', '-', '1'), level=['source', 'k', 'weight'])['mean']}).map(f4).reset_index()
    cmd = 'python benchmarks/bench_suspects_small.py ' + ' '.join(
        f"--{k.replace('_', '-')} {' '.join(':'.join(map(str, o)) if isinstance(o, tuple) else str(o) for o in v) if isinstance(v, list) else v}" for k, v in vars(a).items()
        if k not in ('out', 'work', 'trust')) + (' --trust' if a.trust else '')
    text = (f"## Suspect ranking on a small folder (issue 23)\n\n"
            f"{a.n_per_class * 10} MNIST-sample digits ({a.n_per_class} per class, `subsample_per_class`, seed = the run's seed), "
            f"{100 * a.noise:.0f} % of the labels flipped (`add_label_noise`), written as a competition folder and run through "
            f"the workflow functions `ssfa` runs: `pretrain_folder` (SimCLR, {a.arch}, {a.size} px, batch 64, the CLI's "
            f"learning rate), `pseudo_label_folder` (5 folds, that encoder, `fit_one_cycle` at 1e-3 with fastai's "
            f"augmentation, the CLI's defaults but the epochs) and `rank_suspects` on the out-of-fold probabilities and/or the "
            f"kNN vote among the encoder's embeddings (10 shuffled folds, T = 0.1), the margin score.\n\n"
            f"Machine: 2-core AMD EPYC CPU; {machine(a.threads)} (load average {load0:.1f} at the start: two other jobs shared "
            f"the CPU).\n\nCommand: `{cmd}`\n\n"
            f"### ROC AUC of \"the label is wrong\" with the defaults, mean of the seeds\n\n{md_table(default)}\n\n"
            f"Out-of-fold accuracy against the clean labels (%):\n\n{md_table(acc.reset_index())}\n\n"
            f"### What limits the ranking at this size\n\n"
            f"- **How long the folds train** (`ssfa pseudo-label --epochs`, default 5): 15 epochs instead of 5 raise the "
            f"default ranking from {m('10', '5')} to {m('10', '15')} (pretraining 10 epochs) and from {m('30', '5')} to "
            f"{m('30', '15')} (30 epochs); the folds' accuracy on the clean labels goes from 60-70 % to 73-78 %.\n"
            f"- **How long the encoder pretrains** (`ssfa pretrain --epochs`, default 10; the README's recipe 30): "
            f"{m('10', '5')} at 10 epochs, {m('30', '5')} at 30, {m('60', '5')} at 60.\n"
            f"- **Not the kNN vote's k**: with 45 voters a class, k from 10 to 40 is within 0.01 (k = 5 is worse); "
            f"k matters below 10 items a class (next table), which the new default (`k=None`) covers.\n"
            f"- **The blend weight** matters when one source is weak: with folds trained one epoch (kappa 0.20 against "
            f"0.36-0.40 for the kNN vote), weight 0.5 gives {pick('20', '0.5').loc[(10, '1')]:.4f} and the new default "
            f"(`weight=None`: each source in proportion to its kappa) {pick('auto', 'auto').loc[(10, '1')]:.4f}; elsewhere they agree within 0.001.\n\n"
            f"### Every setting tried (ROC AUC)\n\n{md_table(piv.map(f4).reset_index())}\n")
    ks = k_sweep()
    text += (f"\n### The kNN vote's k against the class size\n\nscikit-learn's 8x8 digits, the 64 pixels as features, 30 % "
             f"labels flipped, `per_class` items drawn from each class, kNN vote alone (`rank_suspects(feats=...)`, 10 folds, or as many as "
             f"items a class), ROC AUC, mean of 5 draws. `None`: the default, twice the median class count among the voters, 3 to 20.\n\n"
             f"{md_table(ks.map(f4).reset_index())}\n")
    if trust is not None:
        bands = pd.cut(trust.kappa, [-1, 0.1, 0.2, 0.3, 0.4, 0.6, 1.0])
        tb = trust.groupby(bands, observed=True).agg(settings=('auc', 'size'), auc_min=('auc', 'min'), auc_median=('auc', 'median'),
                                                     suggestions_right_min=('suggestion_acc', 'min'), separability_median=('separability', 'median'))
        cnn = df.groupby(pd.cut(df.kappa, [-1, 0.2, 0.3, 0.4, 0.6, 1.0]), observed=True).auc.agg(['size', 'min', 'median'])
        text += (f"\n### Evidence for the trust check (`label_trust(min_kappa=0.3)`)\n\n"
                 f"Out-of-fold probabilities (5 folds) of logistic regression on 1-30 principal components (C = 1e-4, 1e-2, 1) "
                 f"of scikit-learn's digits, 500 or 1,797 items, 10/30/50 % labels flipped: {len(trust)} models from useless "
                 f"to good. Kappa: agreement of the top class with the given labels beyond chance.\n\n"
                 f"{md_table(tb.map(lambda v: f'{v:.3f}' if isinstance(v, float) else v).reset_index())}\n\n"
                 f"Every ranking of the table above (CNN folds, kNN votes, blends), by kappa (ROC AUC):\n\n"
                 f"{md_table(cnn.map(lambda v: f'{v:.3f}' if isinstance(v, float) else v).reset_index())}\n")
    write_atomic(a.out, text); print(text)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--n-per-class', type=int, default=50)
    p.add_argument('--noise', type=float, default=0.3)
    p.add_argument('--arch', default='resnet10t')
    p.add_argument('--size', type=int, default=28)
    p.add_argument('--settings', nargs='+', default=['10:5', '30:5', '30:15'], help='pretraining epochs:out-of-fold epochs')
    p.add_argument('--ks', nargs='+', default=['5', '10', '20', '40', 'auto'])
    p.add_argument('--weights', nargs='+', default=['0.25', '0.5', '0.75', 'auto'])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--trust', action='store_true')
    p.add_argument('--work', default=str(WORK))
    p.add_argument('--out', default='benchmarks/results/suspects_small.md')
    a = p.parse_args()
    a.settings = [tuple(map(int, v.split(':'))) for v in a.settings]
    torch.set_num_threads(a.threads)
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    df = pd.DataFrame([r for s in a.seeds for r in run(s, a, work)])
    report(df, a, load0, trust_sweep() if a.trust else None)
