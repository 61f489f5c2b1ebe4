"""Suspect-label ranking on the MNIST sample with symmetric label noise: ROC AUC of "this label is wrong", against cleanlab, and
what cleaning the top suspects buys.

4,000 training digits, `--noise` (30 %) of their labels flipped (`add_label_noise`), SimCLR resnet10t encoder pretrained once
on the unlabelled training images (cached). Scores:
  - kNN vote among the SSL embeddings (`rank_suspects(feats=...)`, no training on labels);
  - out-of-fold probabilities of the SSL fine-tuning recipe (`kfold_pseudo_labels`, 4 folds) (`rank_suspects(probs=...)`);
  - both combined; and cleanlab on the same out-of-fold probabilities (`find_label_issues`, `get_label_quality_scores`).
Then the same fine-tuning recipe is trained on the clean labels, the noisy labels, the noisy labels without the top-n
suspects, and with the top-n suspects relabelled to the suggestion (n = the estimated number of wrong labels).
Every training and fold is cached as JSON/CSV under --work, so a re-run skips finished work.

    python benchmarks/bench_suspects.py [--seeds 0 1] [--noise 0.3] [--threads 2] [--out benchmarks/results/suspects.md]
"""
import argparse, json, sys
from pathlib import Path
import numpy as np, pandas as pd, torch
from sklearn.metrics import roc_auc_score
from noise_common import (WORK, setup, cached, machine, write_atomic, splits, make_learner, fit, test_acc, embeddings,
                          oof_probs, md_table)
from self_supervised_fa.labels.noise import add_label_noise
from self_supervised_fa.labels.suspects import rank_suspects, estimate_noise_rate, KNNVote
from self_supervised_fa.labels.soft_label import prob_columns


def auc(table, noisy):
    "ROC AUC of the table's score for 'the given label is wrong'"
    wrong = table.image_id.map(dict(zip(noisy.image_id, noisy.is_noisy))).astype(bool)
    return float(roc_auc_score(wrong, table.score))


def cleanlab_ranking(noisy, oof):
    "cleanlab's find_label_issues ranking of every item (higher = more suspect): its flagged items in its order, then the rest"
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    p = oof.set_index('image_id').loc[noisy.image_id, prob_columns(oof)].to_numpy()
    y = noisy.label.to_numpy()
    ranked = find_label_issues(y, p, return_indices_ranked_by='self_confidence')   # default filter: prune_by_noise_rate
    score = -get_label_quality_scores(y, p, method='self_confidence') - 2    # the unflagged items, below every flagged one
    score[ranked] = np.linspace(1, 0, len(ranked), endpoint=False)
    return score, ranked


def cleanlab_scores(noisy, oof):
    "cleanlab 2.x on the same out-of-fold probabilities: AUCs of its rankings, its flagged set and its count"
    from cleanlab.rank import get_label_quality_scores
    from cleanlab.count import num_label_issues
    p = oof.set_index('image_id').loc[noisy.image_id, prob_columns(oof)].to_numpy()
    y, wrong = noisy.label.to_numpy(), noisy.is_noisy.to_numpy()
    res = {}
    for m in ('self_confidence', 'normalized_margin', 'confidence_weighted_entropy'):
        res[f'auc_quality_{m}'] = float(roc_auc_score(wrong, -get_label_quality_scores(y, p, method=m)))
    score, ranked = cleanlab_ranking(noisy, oof)
    res['auc_find_label_issues'] = float(roc_auc_score(wrong, score))
    res.update(flagged=len(ranked), flagged_precision=float(wrong[ranked].mean()), flagged_recall=float(wrong[ranked].sum() / wrong.sum()),
               num_label_issues=int(num_label_issues(y, p)))
    return res


def ours_flags(table, noisy):
    flag = table.cl_issue.to_numpy() if 'cl_issue' in table else table.oof_cl_issue.to_numpy()
    wrong = table.image_id.map(dict(zip(noisy.image_id, noisy.is_noisy))).to_numpy().astype(bool)
    return dict(flagged=int(flag.sum()), flagged_precision=float(wrong[flag].mean()), flagged_recall=float(wrong[flag].sum() / wrong.sum()))


def run(seed, a, enc, emb, work):
    trn = add_label_noise(splits()[0], a.noise, seed=seed)
    feats = np.stack([emb[i] for i in trn.image_id])
    tag = f'n{a.noise}_s{seed}'
    res = {'seed': seed, 'noise': float(trn.is_noisy.mean())}
    # (b) kNN vote among the embeddings alone
    for m in ('margin', 'self_confidence'):
        t = rank_suspects(trn, feats=feats, method=m, vote=KNNVote(seed=seed))
        res[f'knn_{m}_auc'] = auc(t, trn)
    res['knn_noise_rate'] = t.attrs['noise_rate']
    # (a) out-of-fold probabilities of the fine-tuning recipe
    oof = oof_probs(trn, enc, work/f'oof_{tag}', seed=seed)
    res['oof_acc_vs_clean'] = float((oof.set_index('image_id').loc[trn.image_id].pred.to_numpy().astype(int) == trn.label_clean.to_numpy()).mean())
    tables = {}
    for m in ('margin', 'self_confidence'):
        tables[f'oof_{m}'] = t = rank_suspects(trn, oof, method=m)
        res[f'oof_{m}_auc'] = auc(t, trn)
        tables[f'both_{m}'] = t = rank_suspects(trn, oof, feats, method=m, vote=KNNVote(seed=seed))
        res[f'both_{m}_auc'] = auc(t, trn)
    res['oof_noise_rate'] = tables['oof_margin'].attrs['noise_rate']
    res['both_noise_rate'] = tables['both_margin'].attrs['noise_rate']
    res['oof_flags'] = ours_flags(tables['oof_margin'], trn)
    res['cleanlab'] = cleanlab_scores(trn, oof)
    # (c) clean the top suspects and train the same recipe
    t = tables[f'both_{a.method}']
    n = int(round(t.attrs['noise_rate'] * len(trn)))
    top = t.iloc[:n]
    res.update(n_cleaned=n, cleaned_precision=float(trn.set_index('image_id').loc[top.image_id].is_noisy.mean()))
    relabelled = trn.set_index('image_id').label.copy(); relabelled.loc[top.image_id] = top.suggested.astype(int).values
    variants = {'clean': trn.assign(label=trn.label_clean), 'noisy': trn, 'drop_top': trn[~trn.image_id.isin(top.image_id)],
                'relabel_top': trn.assign(label=relabelled.loc[trn.image_id].values)}
    res['relabel_top_label_acc'] = float((variants['relabel_top'].label == trn.label_clean).mean())
    for name, d in variants.items():
        key = name if name in ('clean', 'noisy') else f'{name}_{a.method}'
        res[f'acc_{name}'] = cached(work/f'train_{tag}_{key}.json', lambda: {'acc': test_acc(fit(make_learner(d, enc, seed=seed)))})['acc']
    print(json.dumps(res), flush=True)
    return res


def auc_difference(seed, a, emb, work, n_boot=500):
    "Paired bootstrap over the items (same resamples for both): AUC(ours) - AUC(cleanlab find_label_issues), mean and 95 % interval"
    trn = add_label_noise(splits()[0], a.noise, seed=seed)
    oof = pd.read_csv(work/f'oof_n{a.noise}_s{seed}'/'oof.csv', dtype={'image_id': str})
    feats = np.stack([emb[i] for i in trn.image_id])
    wrong = trn.is_noisy.to_numpy()
    ref = cleanlab_ranking(trn, oof)[0]
    ours = {f'{src}, {m}': rank_suspects(trn, oof, feats if src == 'both' else None, method=m, vote=KNNVote(seed=seed)).set_index('image_id').score.loc[trn.image_id].to_numpy()
            for src in ('out-of-fold', 'both') for m in ('margin', 'self_confidence')}
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, len(trn), len(trn)) for _ in range(n_boot)]
    res = {}
    for name, s in ours.items():
        d = np.array([roc_auc_score(wrong[b], s[b]) - roc_auc_score(wrong[b], ref[b]) for b in boots])
        res[name] = (roc_auc_score(wrong, s) - roc_auc_score(wrong, ref), *np.quantile(d, [0.025, 0.975]))
    return res


def report(rows, a, encfile, out, diffs):
    pct = lambda v: f'{100 * v:.1f}'
    auc_rows = []
    for r in rows:
        c = r['cleanlab']
        auc_rows += [dict(seed=r['seed'], source='kNN vote, SSL embeddings (no label training)', ranking='ours, margin', auc=r['knn_margin_auc']),
                     dict(seed=r['seed'], source='kNN vote, SSL embeddings (no label training)', ranking='ours, self-confidence', auc=r['knn_self_confidence_auc']),
                     dict(seed=r['seed'], source='out-of-fold probabilities', ranking='ours, margin', auc=r['oof_margin_auc']),
                     dict(seed=r['seed'], source='out-of-fold probabilities', ranking='ours, self-confidence', auc=r['oof_self_confidence_auc']),
                     dict(seed=r['seed'], source='out-of-fold probabilities', ranking='cleanlab find_label_issues (flagged first)', auc=c['auc_find_label_issues']),
                     dict(seed=r['seed'], source='out-of-fold probabilities', ranking='cleanlab quality, self_confidence', auc=c['auc_quality_self_confidence']),
                     dict(seed=r['seed'], source='out-of-fold probabilities', ranking='cleanlab quality, normalized_margin', auc=c['auc_quality_normalized_margin']),
                     dict(seed=r['seed'], source='out-of-fold probabilities', ranking='cleanlab quality, confidence_weighted_entropy', auc=c['auc_quality_confidence_weighted_entropy']),
                     dict(seed=r['seed'], source='both (0.5 OOF + 0.5 kNN)', ranking='ours, margin', auc=r['both_margin_auc']),
                     dict(seed=r['seed'], source='both (0.5 OOF + 0.5 kNN)', ranking='ours, self-confidence', auc=r['both_self_confidence_auc'])]
    at = pd.DataFrame(auc_rows).pivot_table(index=['source', 'ranking'], columns='seed', values='auc', sort=False)
    at.columns = [f'seed {s}' for s in at.columns]
    at['mean'] = at.mean(1)
    at = at.map(lambda v: f'{v:.4f}').reset_index()
    dt = pd.DataFrame([dict(seed=s, ranking=f'ours ({name})', difference=f'{d:+.4f}', interval=f'[{lo:+.4f}, {hi:+.4f}]')
                       for s, dd in diffs.items() for name, (d, lo, hi) in dd.items()])
    flags = pd.DataFrame([dict(seed=r['seed'], method=m, flagged=f['flagged'], precision=pct(f['flagged_precision']), recall=pct(f['flagged_recall']))
                          for r in rows for m, f in (('ours: confident-learning issues (oof_cl_issue)', r['oof_flags']),
                                                     ('cleanlab find_label_issues (prune_by_noise_rate)', r['cleanlab']))])
    est = pd.DataFrame([dict(seed=r['seed'], true=pct(r['noise']), ours_oof=pct(r['oof_noise_rate']), ours_knn=pct(r['knn_noise_rate']),
                             ours_both=pct(r['both_noise_rate']), cleanlab_num_label_issues=pct(r['cleanlab']['num_label_issues'] / 4000))
                        for r in rows])
    tr = pd.DataFrame([dict(seed=r['seed'], clean=pct(r['acc_clean']), noisy=pct(r['acc_noisy']), n_cleaned=r['n_cleaned'],
                            cleaned_precision=pct(r['cleaned_precision']), drop_top=pct(r['acc_drop_top']),
                            relabel_top=pct(r['acc_relabel_top']), relabel_top_label_acc=pct(r['relabel_top_label_acc']),
                            oof_fold_acc_vs_clean=pct(r['oof_acc_vs_clean']),
                            drop_gap=f"{100 * (r['acc_drop_top'] - r['acc_clean']):+.1f}", relabel_gap=f"{100 * (r['acc_relabel_top'] - r['acc_clean']):+.1f}")
                       for r in rows])
    cmd = 'python benchmarks/bench_suspects.py ' + ' '.join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                                                        for k, v in vars(a).items() if k not in ('out', 'work'))
    text = (f"## Suspect labels: ranking, against cleanlab, and cleaning (issue 14)\n\n"
            f"MNIST sample, 4,000 training digits with {100 * a.noise:.0f} % symmetric label noise (`add_label_noise`, seed = the "
            f"run's seed), 1,000 clean test digits. Encoder: SimCLR resnet10t pretrained once on the 4,000 unlabelled training "
            f"images (`cli.pretrain`, 20 epochs, lr 5e-3, cached as `{encfile.name}`). Out-of-fold probabilities: "
            f"`kfold_pseudo_labels`, 4 folds, each fold model the fine-tuning recipe below. kNN vote: k = 20, T = 0.1, 10 folds. "
            f"Training recipe (every row): the encoder + a fastai head, `fine_tune(10, 1e-3, freeze_epochs=0, lr_mult=1)` "
            f"(`label_efficiency`'s defaults), batch 64.\n\nMachine: {machine(a.threads)}.\n\nCommand: `{cmd}`\n\n"
            f"### ROC AUC of \"the given label is wrong\" (every item ranked)\n\n{md_table(at)}\n\n"
            f"AUC(ours) − AUC(cleanlab `find_label_issues`) on the same out-of-fold probabilities, with a 95 % paired bootstrap "
            f"interval (500 resamples of the 4,000 items):\n\n{md_table(dt)}\n\n"
            f"### Flagged sets\n\n{md_table(flags)}\n\n"
            f"### Estimated noise rate (%)\n\n{md_table(est)}\n\n"
            f"### Training the same recipe after cleaning (test accuracy, %)\n\n"
            f"`drop_top` / `relabel_top`: the top n suspects of the combined ranking (`{a.method}`), n = the estimated number of "
            f"wrong labels (combined estimate), dropped or relabelled to the suggested class. Gaps: against `clean`.\n\n{md_table(tr)}\n")
    write_atomic(out, text); print(text)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--noise', type=float, default=0.3)
    p.add_argument('--method', default='margin', choices=['margin', 'self_confidence'])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--work', default=str(WORK))
    p.add_argument('--out', default='benchmarks/results/suspects.md')
    a = p.parse_args()
    work = Path(a.work)
    enc, encfile, emb = setup(work, a.threads)
    rows = [cached(work/f'suspects_n{a.noise}_s{s}_{a.method}.json', lambda s=s: run(s, a, enc, emb, work)) for s in a.seeds]
    report(rows, a, encfile, Path(a.out), {s: auc_difference(s, a, emb, work) for s in a.seeds})
