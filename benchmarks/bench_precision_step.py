"""One SGD step (forward + backward + step) of a timm body in float32, float32 + channels-last, bf16 autocast and bf16 +
channels-last, on random input: the measurement behind `precision='auto'`'s rule (`core.precision.cpu_bf16_is_faster`).
The four settings are interleaved in every round; medians of the per-round ratios to float32 (speed-ups: above 1 is faster).

    python benchmarks/bench_precision_step.py [--threads 2] [--rounds 5]
"""
import argparse, os, statistics, time, warnings
import torch, timm
from bench_utils import machine, write_text_atomic, md_table
from self_supervised_fa.core.precision import cpu_bf16_is_faster, resolve_precision

SHAPES = [('resnet18', 32, 256), ('resnet18', 96, 64), ('resnet18', 128, 64), ('resnet10t', 32, 128), ('resnet10t', 64, 64)]
SETTINGS = [('fp32', False), ('fp32', True), ('bf16', False), ('bf16', True)]


def step(m, x, opt, bf16):
    with torch.autocast('cpu', torch.bfloat16, enabled=bf16): y = m(x)
    loss = y.float().pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()


def main(a):
    torch.set_num_threads(a.threads); warnings.filterwarnings('ignore'); load0 = os.getloadavg()[0]
    rows = []
    for arch, px, bs in SHAPES:
        runs = {}
        for p, cl in SETTINGS:
            torch.manual_seed(0)
            m = timm.create_model(arch, num_classes=0)
            x = torch.randn(bs, 3, px, px)
            if cl: m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            runs[(p, cl)] = (m, x, torch.optim.SGD(m.parameters(), lr=0.01))
            step(*runs[(p, cl)][:2], runs[(p, cl)][2], p == 'bf16')      # warm-up
        secs = {k: [] for k in runs}
        for _ in range(a.rounds):
            for (p, cl), (m, x, opt) in runs.items():
                t = time.perf_counter(); step(m, x, opt, p == 'bf16'); secs[(p, cl)].append(time.perf_counter() - t)
        f = secs[('fp32', False)]
        row = dict(shape=f'{arch}, {px} px, batch {bs}', fp32=f'{1000 * statistics.median(f):.0f}')
        for p, cl in SETTINGS[1:]:
            row[f'{p}{"_cl" if cl else ""}'] = f"{statistics.median([b / c for b, c in zip(f, secs[(p, cl)])]):.2f}x"
        rows.append(row); print(row, flush=True)
    cmd = f"python benchmarks/bench_precision_step.py --threads {a.threads} --rounds {a.rounds}"
    with open('/proc/cpuinfo') as fh: model = next((l.split(':', 1)[1].strip() for l in fh if l.startswith('model name')), '?')
    txt = (f"## One training step of a timm body: float32, channels-last, bf16 autocast\n\nMachine: {machine(load0, a.threads)}; "
           f"CPU model name `{model}`, `cpu_bf16_is_faster()` = {cpu_bf16_is_faster()}, so `precision='auto'` = "
           f"{resolve_precision('auto', 'cpu')}. {a.rounds} interleaved rounds after a warm-up; speed-ups against float32 "
           f"are medians of the per-round ratios (above 1x: faster).\n\nCommand: `{cmd}`\n\n"
           + md_table(rows, ['shape', 'fp32', 'fp32_cl', 'bf16', 'bf16_cl'],
                      ['body, input', 'float32 step (ms)', 'channels-last', 'bf16 autocast', 'bf16 + channels-last']) + '\n')
    write_text_atomic(a.out, txt); print(txt)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--out', default='benchmarks/results/precision_step.md')
    main(p.parse_args())
