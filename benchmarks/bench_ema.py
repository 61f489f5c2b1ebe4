"""Cost of one teacher update (exponential moving average of the weights) of a resnet50 encoder + BYOL projector:
`teacher.EMATeacher.update` (one fused `torch._foreach_lerp_`) against lightly's `update_momentum` (a Python loop over
the parameters), interleaved in one run, medians and bests of `--reps` updates each. Both results are checked equal.

    python benchmarks/bench_ema.py [--arch resnet50] [--reps 30] [--threads 2]
"""
import argparse, copy, os, platform, statistics, time
import torch
from self_supervised_fa.siamese.byol import create_byol_model
from bench_utils import write_text_atomic


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='resnet50'); p.add_argument('--reps', type=int, default=30)
    p.add_argument('--threads', type=int, default=2); p.add_argument('--out', default='benchmarks/results/ema.md')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from lightly.models.utils import update_momentum
    torch.manual_seed(0)
    model = create_byol_model(a.arch, hidden_size=4096, projection_size=256)
    student = torch.nn.ModuleDict(dict(encoder=model.encoder, projector=model.projector))
    ours_t, light_t = model.teacher, copy.deepcopy(model.teacher)          # two identical teachers
    light = torch.nn.ModuleDict(dict(encoder=light_t.encoder, projector=light_t.projector))
    n_params = sum(p.numel() for p in student.parameters())
    with torch.no_grad():
        for p in student.parameters(): p.add_(torch.randn_like(p) * 0.01)   # student and teacher apart
    res = {'EMATeacher.update (torch._foreach_lerp_)': [], "lightly update_momentum": []}
    for r in range(a.reps + 1):
        t = time.perf_counter(); model.update_teacher(0.99); t1 = time.perf_counter() - t
        t = time.perf_counter(); update_momentum(student, light, 0.99); t2 = time.perf_counter() - t
        if r:                                                               # the first round warms up
            res['EMATeacher.update (torch._foreach_lerp_)'].append(t1 * 1e3); res["lightly update_momentum"].append(t2 * 1e3)
    for x, y in zip(ours_t.parameters(), light.parameters()): torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
    med, best = {k: statistics.median(v) for k, v in res.items()}, {k: min(v) for k, v in res.items()}
    ref = "lightly update_momentum"
    md = [f"One teacher update of a {a.arch} encoder + BYOL projector (4096 -> 256): {n_params / 1e6:.1f} M parameters, "
          f"{a.reps} interleaved updates each, milliseconds; teachers checked equal after all updates.",
          f"Machine: 2-core CPU, 24 GiB, {a.threads} torch threads, shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end), "
          f"Python {platform.python_version()}, torch {torch.__version__.split('+')[0]}, no GPU.",
          f"Command: `python benchmarks/bench_ema.py --arch {a.arch} --reps {a.reps} --threads {a.threads}`", '',
          '| update | median (ms) | best (ms) | ratio to lightly (median / best) |', '|---|---:|---:|---:|']
    md += [f"| {k} | {med[k]:.1f} | {best[k]:.1f} | {med[k] / med[ref]:.2f} / {best[k] / best[ref]:.2f} |" for k in res]
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    write_text_atomic(a.out, '\n'.join(md) + '\n')
    print('\n'.join(md))


if __name__ == '__main__': main()
