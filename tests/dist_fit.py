"""A user's training script, run by tests/test_dist_fit.py under `torchrun --nproc_per_node 2` (gloo, CPU): SimCLR, BYOL
(a teacher) and MoCo v2 (a teacher and a queue) with `fit_one_cycle` inside `dist.distrib_ctx`; rank 0 alone writes the encoder file and
the checkpoints;
then `SoftLabelCallback` training, recording the targets of each process's items.
Writes OUTDIR/<method>_<rank>.npz: every weight and buffer of the model and the train losses. `python tests/dist_fit.py OUTDIR`"""
import os, sys
import numpy as np, torch
from fastai.learner import Learner
from fastai.torch_core import set_seed
import fastai.callback.schedule
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.core.dist import distrib_ctx, is_main, rank
from self_supervised_fa.encoders.files import save_encoder
from self_supervised_fa.core.checkpoint import CheckpointCallback
from self_supervised_fa.siamese.simclr import SimCLRCallback, create_simclr_model
from self_supervised_fa.augment.views import small_image_augs
from self_supervised_fa.siamese.moco import MoCoV2Callback, create_moco_v2_model
from self_supervised_fa.siamese.byol import BYOLCallback, create_byol_model
from self_supervised_fa.labels.soft_label import SoftLabelCallback, SoftTargetCrossEntropy, item_labels
from fastai.callback.core import Callback
from torch import nn

SEED = int(os.environ.get('SSFA_TEST_SEED', 0))

METHODS = {
    'simclr': lambda: (create_simclr_model('test_resnet', hidden_size=32, projection_size=16, n_in=1),
                       SimCLRCallback(small_image_augs(28), temperature=0.2)),
    'byol': lambda: (create_byol_model('test_resnet', hidden_size=32, projection_size=16, n_in=1),
                     BYOLCallback(small_image_augs(28), momentum=0.99)),
    'moco_v2': lambda: (create_moco_v2_model('test_resnet', hidden_size=32, projection_size=16, queue_size=64, n_in=1),
                        MoCoV2Callback(small_image_augs(28), momentum=0.99)),
}

def main(outdir, epochs=4):
    torch.set_num_threads(1)
    for name, make in METHODS.items():
        set_seed(SEED)   # the same initial weights in every process (DDP also broadcasts rank 0's), and a fixed shuffle
        dls = sample_dls(n_per_class=16, n_in=1, valid_df=load_sample_df('test').iloc[:16], bs=8, seed=SEED)
        model, cb = make()
        ckpt = CheckpointCallback(os.path.join(outdir, f'{name}_checkpoint_rank{rank()}.safetensors'))
        learn = Learner(dls, model, cbs=[cb, ckpt])
        with learn.no_bar(), distrib_ctx(learn): learn.fit_one_cycle(epochs, 2e-3)
        if is_main(): save_encoder(learn.model.encoder, os.path.join(outdir, f'{name}_encoder_rank{rank()}.safetensors'))
        state = {k: v.detach().cpu().double().numpy() for k, v in learn.model.state_dict().items()}
        np.savez(os.path.join(outdir, f'{name}_{rank()}.npz'), loss=np.array([v[0] for v in learn.recorder.values]),
                 **{f'w/{k}': v for k, v in state.items()})

class RecordTargetsCallback(Callback):
    "The item indices of each training batch (before `SoftLabelCallback` replaces its labels) and the targets it made"
    order = -6
    def before_fit(self): self.idx, self.targ = [], []
    def before_batch(self):
        if self.training: self.idx.append(self.yb[-1].cpu())
    def after_pred(self):
        if self.training: self.targ.append(self.yb[0].cpu())

def soft_label(outdir, epochs=2):
    "Soft-label training on the sample's 40 items: every process records its items' targets"
    torch.manual_seed(0)
    dls = sample_dls(n_per_class=4, n_in=1, valid_df=load_sample_df('test').iloc[:16], bs=6, seed=0)
    probs = torch.distributions.Dirichlet(torch.ones(10)).sample((len(dls.train.dataset),))
    rec = RecordTargetsCallback()
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), loss_func=SoftTargetCrossEntropy(),
                    cbs=[SoftLabelCallback(probs, w=0.3), rec])
    with learn.no_bar(), distrib_ctx(learn): learn.fit(epochs, 1e-3)
    np.savez(os.path.join(outdir, f'soft_label_{rank()}.npz'), probs=probs.numpy(), labels=item_labels(dls.train).numpy(),
             idx=torch.cat(rec.idx).numpy(), targ=torch.cat(rec.targ).numpy())

def plc(outdir, epochs=2):
    "Progressive label correction on the sample's 40 items, 4 batches of 5 per process and epoch"
    from self_supervised_fa.labels.plc import PLCCallback
    torch.manual_seed(0)
    dls = sample_dls(n_per_class=4, n_in=1, valid_df=load_sample_df('test').iloc[:16], bs=5, seed=0)
    cb = PLCCallback(warmup=1, theta=0.05, theta_min=0.0)
    learn = Learner(dls, nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), cbs=cb)
    with learn.no_bar(), distrib_ctx(learn): learn.fit(epochs, 1e-2)
    np.savez(os.path.join(outdir, f'plc_{rank()}.npz'), given=cb.given.numpy(), labels=cb.labels.numpy(), probs=cb.probs.numpy(),
             has_probs=cb.has_probs.numpy(), item_labels=item_labels(dls.train).numpy(), n_changes=np.array(len(cb.changes)))

if __name__ == '__main__':
    main(sys.argv[1])
    soft_label(sys.argv[1])
    plc(sys.argv[1])
