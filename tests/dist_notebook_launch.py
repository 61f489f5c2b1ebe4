"""The Kaggle two-GPU path on CPU: `accelerate.notebook_launcher(train, num_processes=2)` as a notebook cell calls it,
with the training (SimCLR in `dist.distrib_ctx`) inside a function. Run by tests/test_dist_fit.py as
`python tests/dist_notebook_launch.py OUTDIR`; each process writes OUTDIR/weights_<rank>_<world size>.npy"""
import os, sys


def train(outdir):
    import numpy as np, torch
    torch.set_num_threads(1)
    from fastai.learner import Learner
    from fastai.torch_core import set_seed
    import fastai.callback.schedule
    from self_supervised_fa.data.sample import sample_dls, load_sample_df
    from self_supervised_fa.core.dist import distrib_ctx, rank, world_size
    from self_supervised_fa.siamese.simclr import SimCLRCallback, create_simclr_model
    from self_supervised_fa.augment.views import small_image_augs
    set_seed(0)
    dls = sample_dls(n_per_class=4, n_in=1, valid_df=load_sample_df('test').iloc[:16], bs=8, seed=0)
    learn = Learner(dls, create_simclr_model('test_resnet', hidden_size=32, projection_size=16, n_in=1),
                    cbs=SimCLRCallback(small_image_augs(28)))
    with learn.no_bar(), distrib_ctx(learn): learn.fit_one_cycle(1, 1e-3)
    w = torch.cat([p.detach().flatten() for p in learn.model.parameters()]).numpy()
    np.save(os.path.join(outdir, f'weights_{rank()}_{world_size()}.npy'), w)


if __name__ == '__main__':
    from accelerate import notebook_launcher
    notebook_launcher(train, (sys.argv[1],), num_processes=2)
