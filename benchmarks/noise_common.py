"""Shared by bench_noise_map.py and bench_suspects.py: the cached SimCLR encoder, JSON result cache, machine line."""
import json, os, time
from pathlib import Path
import torch
from bench_utils import write_text_atomic
from self_supervised_fa.core.io import atomic_path

WORK = Path(os.path.expanduser('~/.cache/self_supervised_fa/bench_noise'))


def ssl_encoder(work=WORK, epochs=20, lr=5e-3, bs=128, seed=0, arch='resnet10t'):
    "SimCLR encoder pretrained once on the sample's 4,000 unlabelled training digits (the README's settings), cached"
    from self_supervised_fa.app.demo import pretrain
    from self_supervised_fa.encoders.files import save_encoder, load_encoder
    fn = Path(work)/f'simclr_{arch}_e{epochs}_lr{lr}_bs{bs}_s{seed}.safetensors'
    if fn.exists(): return load_encoder(fn), fn
    enc, _, secs = pretrain('simclr', arch, epochs=epochs, lr=lr, bs=bs, seed=seed, knn_monitor=False, progress=False)
    save_encoder(enc, fn, recipe=dict(method='simclr', arch=arch, epochs=epochs, lr=lr, bs=bs, seed=seed,
                                       seconds=round(secs), threads=torch.get_num_threads()))
    print(f'pretrained {fn.name} in {secs:.0f} s', flush=True)
    return enc, fn


def setup(work, threads):
    "Torch threads, the cached SSL encoder (pretrained if missing), its file and the embeddings of every digit"
    torch.set_num_threads(threads)
    enc, encfile = ssl_encoder(work)
    return enc, encfile, embeddings(enc, work, f'emb_{encfile.stem}')


def cached(fn, compute):
    "Result of `compute()` (a dict) kept as JSON in `fn`, written atomically: a re-run skips finished cells"
    fn = Path(fn)
    if fn.exists(): return json.loads(fn.read_text())
    t = time.time(); r = compute(); r['seconds'] = round(time.time() - t, 1)
    fn.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(fn, json.dumps(r))
    return r


def machine(threads):
    from bench_utils import hardware
    return f"{hardware(threads)}; load average {os.getloadavg()[0]:.1f} when the table was written"


def write_atomic(path, text):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


# ---- the one training recipe every method shares (label_efficiency's fine-tuning defaults)
EPOCHS, FT_LR, SCRATCH_LR = 10, 1e-3, 2e-3
_SPLITS = {}

def splits():
    "(train, test, valid): the sample's 4,000 training and 1,000 test digits; valid = 20 test digits, only for the epoch log"
    if not _SPLITS:
        from self_supervised_fa.data.sample import load_sample_df
        tst = load_sample_df('test')
        _SPLITS.update(train=load_sample_df('train'), test=tst, valid=tst.iloc[:20])
    return _SPLITS['train'], _SPLITS['test'], _SPLITS['valid']


def make_learner(trn, body, cbs=(), seed=0, valid=None):
    "fastai classifier over a copy of `body` on `trn` (SoftTargetCrossEntropy: the same loss for hard and soft targets)"
    import copy
    from fastai.torch_core import set_seed
    from self_supervised_fa.data.sample import sample_dls
    from self_supervised_fa.encoders.classifier import classifier_learner
    from self_supervised_fa.labels.soft_label import SoftTargetCrossEntropy
    set_seed(seed, reproducible=True)
    bs = 32 if len(trn) <= 1000 else 64
    dls = sample_dls(trn, splits()[2] if valid is None else valid, bs=min(bs, len(trn) // 2), seed=seed)
    return classifier_learner(dls, copy.deepcopy(body), loss_func=SoftTargetCrossEntropy(), cbs=list(cbs))


def fit(learn, pretrained=True, epochs=EPOCHS):
    "label_efficiency's recipe: pretrained -> fine_tune(epochs, 1e-3, freeze_epochs=0, lr_mult=1); scratch -> fit_one_cycle(epochs, 2e-3)"
    with learn.no_bar(), learn.no_logging():
        if pretrained: learn.fine_tune(epochs, FT_LR, freeze_epochs=0, lr_mult=1)
        else: learn.fit_one_cycle(epochs, SCRATCH_LR)
    return learn


def test_acc(learn):
    "Accuracy on the 1,000 clean test digits"
    tst = splits()[1]
    with learn.no_bar(): p, _ = learn.get_preds(dl=learn.dls.test_dl(tst))
    return float((p.argmax(1).numpy() == tst.label.values).mean())


def embeddings(enc, work=WORK, name='emb'):
    "SSL embeddings of every train and test digit, keyed by image_id (cached as .npy, rebuilt if missing)"
    import numpy as np, pandas as pd
    from self_supervised_fa.data.sample import sample_dls
    from self_supervised_fa.evaluate.embeddings import get_embeddings
    fn = Path(work)/f'{name}.npy'
    trn, tst, _ = splits()
    ids = pd.concat([trn.image_id, tst.image_id]).tolist()
    if not fn.exists():
        dls = sample_dls(trn, tst, bs=256)
        e = np.concatenate([get_embeddings(enc, dls.train, progress=False)[0].numpy(), get_embeddings(enc, dls.valid, progress=False)[0].numpy()])
        with atomic_path(fn) as tmp: np.save(tmp, e)
    e = np.load(fn)   # a plain float array (allow_pickle stays False)
    return dict(zip(ids, e))


def oof_probs(trn, enc, out_dir, seed=0, n_folds=4):
    "Out-of-fold probabilities of the SSL fine-tuning recipe (`kfold_pseudo_labels`, one fold model per fold; resumable)"
    from self_supervised_fa.labels.pseudo_label import kfold_pseudo_labels, FoldLearner
    n_folds = int(min(n_folds, trn.label.value_counts().min()))   # a small noisy budget can leave a class with fewer items
    return kfold_pseudo_labels(trn, out_dir, n_folds=n_folds, seed=seed, learner=FoldLearner(learner_fn=lambda t, v: make_learner(t, enc, seed=seed, valid=v.iloc[:20]), fit_fn=lambda learn: fit(learn)))


def md_table(df):
    rows = [list(map(str, df.columns))] + [[str(v) for v in r] for r in df.itertuples(index=False)]
    return '\n'.join(['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0])] + ['| ' + ' | '.join(r) + ' |' for r in rows[1:]])
