"""The small CNN of the RotNet lecture we started from, as a timm model (`timm.create_model('mnist_cnn2')`), so that
`create_timm_body`, `TimmEncoder.stage_features` and the encoder files work on it like on any timm network.

The lecture's network had two convolutional layers; its exact sizes are not in our sources, so this is the two-conv
network of the PyTorch MNIST example: conv 3x3 (32) - ReLU - conv 3x3 (64) - ReLU - max-pool 2 - dropout 0.25 - fc 128
- ReLU - dropout 0.5 - fc (classes). `forward_features` ends at the max-pool (64 x 12 x 12 on 28 px digits); the pooled
embedding (`forward_head(pre_logits=True)`, timm's `head_hidden_size`) is the 128 units of fc 1, so a pretext head or a
downstream classifier is the last layer alone, as in the lecture."""
import torch
from torch import nn
from timm.models import register_model


class TwoConvNet(nn.Module):
    "Two 3x3 convolutions, a max-pool and two fully connected layers (the PyTorch MNIST example), with timm's model interface"
    def __init__(self, num_classes=10, in_chans=1, hidden=128, img_size=28, drop_rate=0.5, **kwargs):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(in_chans, 32, 3), nn.ReLU()
        self.conv2, self.act2, self.pool = nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2)
        side = (img_size - 4) // 2
        self.drop1, self.fc1, self.act3, self.drop2 = nn.Dropout(0.25), nn.Linear(64 * side * side, hidden), nn.ReLU(), nn.Dropout(drop_rate)
        self.num_classes, self.num_features, self.head_hidden_size = num_classes, 64, hidden
        self.fc = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()
        self.feature_info = [dict(module='act1', num_chs=32, reduction=1), dict(module='pool', num_chs=64, reduction=2)]
        self.pretrained_cfg = dict(first_conv='conv1', classifier='fc')

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt='NCHW', intermediates_only=False):
        take = range(2) if indices is None else ([indices] if isinstance(indices, int) else indices)
        take = [i % 2 for i in take]
        a = self.act1(self.conv1(x))
        out = [a] if 0 in take else []
        if not (stop_early and max(take) == 0):
            b = self.pool(self.act2(self.conv2(a)))
            if 1 in take: out.append(b)
        else: b = None
        return out if intermediates_only else (b, out)

    def forward_features(self, x): return self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
    def forward_head(self, x, pre_logits=False):
        x = self.drop2(self.act3(self.fc1(self.drop1(x.flatten(1)))))
        return x if pre_logits else self.fc(x)
    def forward(self, x): return self.forward_head(self.forward_features(x))


@register_model
def mnist_cnn2(pretrained=False, **kwargs):
    "The two-conv MNIST network (PyTorch example) as a timm model"
    if pretrained: raise ValueError("mnist_cnn2 has no pretrained weights")
    kwargs.pop('pretrained_cfg', None); kwargs.pop('pretrained_cfg_overlay', None)
    return TwoConvNet(**kwargs)
