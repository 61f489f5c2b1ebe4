"""Every siamese method skips a batch of one image (the last batch of k*bs+1 images) in training and validation, the
epoch's loss being the mean over the other batches; ViT bodies run DINO's and SwAV's multi-crop presets at the data's
own size (crops rounded to multiples of the patch), and sizes that cannot work fail before any step, naming the ones that do"""
import math, warnings
import pytest, torch
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.torch_core import set_seed
import fastai.callback.schedule, fastai.callback.progress  # noqa: F401 (fit_one_cycle, no_bar)
from self_supervised_fa.data.sample import sample_dls, load_sample_df
from self_supervised_fa.app.registry import METHODS, method_learner
from self_supervised_fa.augment.multicrop import small_dino_augs
from self_supervised_fa.siamese.dino import create_dino_model, DINOCallback
from self_supervised_fa.siamese.swav import create_swav_model, SwAVCallback

pytestmark = [pytest.mark.usefixtures('one_torch_thread'), pytest.mark.filterwarnings('ignore:ViewAugment. 1-channel')]
SIAMESE = [n for n, m in METHODS.items() if m.kind == 'siamese']
SMALL = dict(hidden_size=32, projection_size=16)
HEADS = dict(simsiam=dict(SMALL, pred_hidden_size=16), moco_v2=dict(SMALL, queue_size=32), moco_v3=dict(SMALL, pred_hidden_size=16),
             swav=dict(SMALL, n_prototypes=20), dino=dict(out_dim=32, hidden_size=32, bottleneck_size=16))


def _dls(n_train:int, n_valid:int, bs:int, size=None, **kwargs):
    set_seed(0)
    return sample_dls(train_df=load_sample_df('train').iloc[:n_train], valid_df=load_sample_df('test').iloc[:n_valid], bs=bs,
                      size=size, **kwargs)


class _Count(Callback):
    "Batches seen and optimiser steps taken in training"
    def before_fit(self): self.batches, self.steps = 0, 0
    def after_batch(self): self.batches += self.training
    def after_step(self): self.steps += 1


@pytest.mark.parametrize('name', SIAMESE)
def test_a_last_batch_of_one_is_skipped(name):
    "17 images in batches of 8 (drop_last off in training too): 8, 8 and 1; the lone image is skipped, not a crash"
    dls = _dls(17, 17, 8)
    dls.train.drop_last = False
    count = _Count()
    learn = method_learner(name, dls, arch='test_resnet', model_kwargs=HEADS.get(name, SMALL)).add_cb(count)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
    recorded = learn.recorder.values[-1][1]
    assert (count.batches, count.steps) == (3, 2), (count.batches, count.steps)   # the batch of one: no step
    with learn.no_bar(), learn.no_logging(): full = learn.validate(dl=dls.valid.new(drop_last=True))[0]   # batches 1 and 2 only
    assert math.isfinite(recorded) and recorded == pytest.approx(full, rel=1e-5), (recorded, full)


@pytest.mark.parametrize('which', ['training', 'validation'])
def test_every_batch_of_one_fails_before_fit(which):
    dls = _dls(8, 8, 4)
    dls = DataLoaders(dls.train.new(bs=1), dls.valid) if which == 'training' else DataLoaders(dls.train, dls.valid.new(bs=1))
    count = _Count()
    learn = method_learner('simclr', dls, arch='test_resnet', model_kwargs=SMALL).add_cb(count)
    with pytest.raises(ValueError, match=f'every {which} batch would hold one image \\(8 images, bs=1\\).*bs=2 or more'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert count.batches == 0


def _vit_fit(factory, cb, size:int, arch='test_vit', **kwargs):
    "One training step of `factory(arch)` on 4 images of `size` px; the (h, w) of every batch the student encoder saw"
    torch.manual_seed(0)
    model = factory(arch, n_in=1, **kwargs)
    seen = []
    model.encoder.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])) if m.training else None)
    w0 = model.encoder.model.patch_embed.proj.weight.detach().clone()
    learn = Learner(_dls(4, 2, 4, size=size), model, cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert not torch.equal(w0, model.encoder.model.patch_embed.proj.weight), "no backward step reached the ViT"
    assert all(math.isfinite(v) for v in learn.recorder.values[-1][:2])
    return seen


VIT_METHODS = {'dino': (create_dino_model, DINOCallback, dict(out_dim=32, hidden_size=32, bottleneck_size=16, freeze_last_layer=0)),
               'swav': (create_swav_model, SwAVCallback, dict(hidden_size=32, projection_size=16, n_prototypes=20, freeze_prototypes=0))}

def _split(kw): return {k: v for k, v in kw.items() if not k.startswith('freeze')}, {k: v for k, v in kw.items() if k.startswith('freeze')}


@pytest.mark.parametrize('size,crops', [(28, (32, 16)), (32, (32, 16)), (64, (64, 32)), (96, (96, 48))])
@pytest.mark.parametrize('method', ['dino', 'swav'])
def test_vit_runs_the_multicrop_preset_at_the_data_size(method, size, crops):
    "timm's test_vit (16-px patches) with the default preset (2 global + 6 local crops): both sizes multiples of 16"
    factory, cbt, kw = VIT_METHODS[method]
    mkw, ckw = _split(kw)
    seen = _vit_fit(factory, cbt(**ckw), size, **mkw)
    assert seen == [(crops[0],) * 2, (crops[1],) * 2], seen   # one forward per size group: the global, then the local crops
    assert all(s % 16 == 0 for hw in seen for s in hw)


@pytest.mark.parametrize('dynamic', [None, True])
def test_vit_tiny_at_64_px(dynamic):
    "The case of the report: create_dino_model('vit_tiny_patch16_224', n_in=1), with or without dynamic_img_size=True, on 64-px images"
    mkw, ckw = _split(VIT_METHODS['dino'][2])
    extra = {} if dynamic is None else dict(dynamic_img_size=dynamic)
    assert _vit_fit(create_dino_model, DINOCallback(**ckw), 64, arch='vit_tiny_patch16_224', **mkw, **extra) == [(64, 64), (32, 32)]


def test_sizes_that_cannot_work_are_named_before_any_step():
    mkw, ckw = _split(VIT_METHODS['dino'][2])
    dls = _dls(4, 2, 4)
    cases = [  # (model, callback, what the error must say)
        (create_dino_model('test_vit', n_in=1, img_size=56, patch_size=28, **mkw), DINOCallback(**ckw), 'multi-crop works from 42-px images'),
        (create_dino_model('test_vit', n_in=1, **mkw), DINOCallback(small_dino_augs(28), **ckw), 'use 16 or 32 px'),
        (create_dino_model('test_vit', n_in=1, dynamic_img_size=False, **mkw), DINOCallback(**ckw), 'dynamic_img_size=True'),
    ]
    for model, cb, msg in cases:
        count = _Count()
        learn = Learner(dls, model, cbs=[cb, count])
        with pytest.raises(ValueError, match=msg), learn.no_bar(), learn.no_logging(): learn.fit(1)
        assert count.steps == 0 and learn.loss_func != cb.compute_loss   # nothing trained, the learner given back
    # the sizes the first error names do work
    seen = _vit_fit(create_dino_model, DINOCallback(**ckw), 42, img_size=56, patch_size=28, **mkw)
    assert seen == [(56, 56), (28, 28)], seen


@pytest.mark.parametrize('method', ['dino', 'swav'])
def test_registry_and_folder_learners_fit_a_vit_at_28_px(method):
    "method_learner and the folder workflow's learner hand the body's patch to the multi-crop preset: a ViT trains on 28-px digits"
    from self_supervised_fa.app.workflow import folder_method_learner
    mkw, ckw = _split(VIT_METHODS[method][2])
    for make in (lambda dls: method_learner(method, dls, 'test_vit', model_kwargs=mkw, callback_kwargs=ckw),
                 lambda dls: folder_method_learner(method, dls, 'test_vit', 1, 28, model_kwargs=mkw, callback_kwargs=ckw)):
        learn = make(_dls(4, 2, 4))
        seen = []
        learn.model.encoder.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])) if m.training else None)
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
        assert seen and all(s % 16 == 0 for hw in seen for s in hw), seen
