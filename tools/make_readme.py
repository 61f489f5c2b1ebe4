"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as python blocks) with a linked list of
the benchmark results, and benchmarks/README.md with every table in benchmarks/results/*.md. Used instead of
nbdev_readme, which needs quarto."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TITLES = {'ntxent': 'NT-Xent loss: time and memory (issue 3)', 'simclr_throughput': 'SimCLR training throughput (issue 3)',
          'pretext': 'Pretext tasks after a short CPU run (issue 4)', 'label_efficiency': 'Label efficiency (issue 5)',
          'noisy': 'Noisy labels: test accuracy (issue 6)', 'soft_label_overhead': 'SoftLabelCB per-batch overhead (issue 6)'}

def _summary(text:str, n:int=110) -> str:
    "The first line of a result file, without its heading marks, cut to `n` characters"
    line = text.strip().split('\n')[0].lstrip('#').strip()
    return line if len(line) <= n else line[:n - 3].rstrip() + '...'

def benchmarks_readme(results) -> str:
    "benchmarks/README.md: every result table, each under its file's heading"
    parts = ['# Benchmarks\n\nEach table below was written by the script named in it (`python benchmarks/<name>.py`), on the '
             'machine it names; the files are in `results/`. The project README links here.']
    for p in results:
        text = p.read_text().strip()
        title = TITLES.get(p.stem, p.stem.replace('_', ' ').capitalize())
        parts.append(f'<a id="{p.stem}"></a>\n\n' + (text if text.startswith('#') else f'## {title}\n\n{text}'))
    return '\n\n'.join(parts) + '\n'

def main():
    nb = json.loads((ROOT/'nbs'/'index.ipynb').read_text())
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source']).strip()
        if not src or src.startswith('#| hide'): continue
        if src.startswith('#| echo: false') and 'method_table()' in src:   # the method list, generated from the registry
            from self_supervised_fa.app.registry import method_table
            parts.append(method_table()); continue
        parts.append(src if c['cell_type'] == 'markdown' else f'```python\n{src}\n```')
    results = sorted((ROOT/'benchmarks'/'results').glob('*.md'))
    if results:
        (ROOT/'benchmarks'/'README.md').write_text(benchmarks_readme(results))
        items = [f'- [`{p.stem}`](benchmarks/README.md#{p.stem}): {_summary(p.read_text())}' for p in results]
        parts.append('## Benchmarks\n\nEvery measurement, with its machine and the command that made it, is in '
                     '[benchmarks/README.md](benchmarks/README.md):\n\n' + '\n'.join(items))
    (ROOT/'README.md').write_text('\n\n'.join(parts) + '\n')

if __name__ == '__main__': main()
