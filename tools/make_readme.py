"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as python blocks), plus the
benchmark tables in benchmarks/results/*.md. Used instead of nbdev_readme, which needs quarto."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TITLES = {'ntxent': 'NT-Xent loss: time and memory (issue 3)', 'simclr_throughput': 'SimCLR training throughput (issue 3)',
          'pretext': 'Pretext tasks after a short CPU run (issue 4)', 'label_efficiency': 'Label efficiency (issue 5)',
          'noisy': 'Noisy labels: test accuracy (issue 6)', 'soft_label_overhead': 'SoftLabelCB per-batch overhead (issue 6)'}

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
        parts.append('## Benchmarks\n\nEach table below was written by the script named in it (`benchmarks/`).')
        for p in results:
            text = p.read_text().strip()
            title = TITLES.get(p.stem, p.stem.replace('_', ' ').capitalize())
            if text.startswith('## '):    # every heading one level down, below '## Benchmarks'
                text = '\n'.join('#' + l if l.startswith('#') else l for l in text.split('\n'))
            parts.append(text if text.startswith('#') else f'### {title}\n\n{text}')
    (ROOT/'README.md').write_text('\n\n'.join(parts) + '\n')

if __name__ == '__main__': main()
