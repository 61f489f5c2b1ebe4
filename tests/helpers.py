"Shared test helpers: CPU bf16 autocast for fit (fastai's MixedPrecision autocasts on CUDA only), small sample loaders"
import torch
from fastai.callback.core import Callback


class CPUBf16Callback(Callback):
    "Run the forward pass and the loss under `torch.autocast('cpu', torch.bfloat16)`, as `MixedPrecision` does on a GPU"
    order = 10   # where fastai's MixedPrecision sits: after the batch-replacing callbacks (8)
    def before_batch(self):
        self.ctx = torch.autocast('cpu', torch.bfloat16); self.ctx.__enter__()
    def after_loss(self): self.ctx.__exit__(None, None, None)
    def after_cancel_batch(self):
        if torch.is_autocast_enabled('cpu'): self.ctx.__exit__(None, None, None)


def grad_agreement(g32, g16):
    "(cosine similarity, relative norm difference) of two gradients, flattened"
    a, b = torch.cat([g.flatten().double() for g in g32]), torch.cat([g.flatten().double() for g in g16])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0)), float((a - b).norm() / a.norm())
