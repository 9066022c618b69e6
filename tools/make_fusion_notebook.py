"""Writes examples/fusion_exploration.ipynb (cells kept here so the notebook's source is reviewable as code).

    python tools/make_fusion_notebook.py
"""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell("# Exploring fusion choices on the GPT-2 train step\n\n"
                      "Which fusion decisions matter for GPT-2 small's training step on an H100, and what happens "
                      "when we forbid or force single decisions? Every number below comes from the imported "
                      "StableHLO of the real flax/optax program."),
    new_code_cell("import os, sys\n"
                  "sys.path.insert(0, os.path.abspath('..')) if os.path.basename(os.getcwd()) == 'examples' else None\n"
                  "import explorer, hw_targets\n"
                  "from explorer.model_files import program_fn\n"
                  "from explorer.explore_fusion import fusion_decisions, decisions_table, with_fusion_edges\n"
                  "from passes.fusion import Fuse\n"
                  "# GPT-2 small; LAYERS can be lowered (e.g. by the tests) to keep the notebook quick\n"
                  "LAYERS = int(os.environ.get('GPT2_LAYERS', '12'))\n"
                  "examples_dir = 'examples' if os.path.isdir('examples') else '.'\n"
                  "fn, args = program_fn(os.path.join(examples_dir, 'gpt2_train.py'))(n_layers=LAYERS)\n"
                  "prog = explorer.lower(fn, *args)\n"
                  "h100 = hw_targets.load('h100_sxm')\n"
                  "print(prog.num_ops, 'ops;', f'{prog.flops:.3e} flops')"),
    new_markdown_cell("## The three strategies"),
    new_code_cell("cmp = explorer.compare(prog, [h100], pipelines=['fuse{strategy=none}', 'fuse{strategy=xla}', "
                  "'fuse{strategy=aggressive}'])\nprint(cmp.table())"),
    new_markdown_cell("## The fusion decisions that save the most time\n\nEach row is one producer->consumer "
                      "decision the `xla` strategy made; *time saved* is exact: the estimate with that one decision "
                      "forbidden, minus the estimate with it."),
    new_code_cell("decisions = fusion_decisions(prog, h100, 'fuse{strategy=xla}', top=8)\n"
                  "print(decisions_table(decisions))"),
    new_markdown_cell("## Forbid the most valuable decision, and see the estimate change"),
    new_code_cell("base = explorer.estimate(prog, h100, pipeline='fuse{strategy=xla}')\n"
                  "top = decisions[0]\n"
                  "forbidden = explorer.estimate(prog, h100, pipeline=with_fusion_edges('fuse{strategy=xla}', "
                  "forbid=[(top.producer, top.consumer)]))\n"
                  "print(f'xla: {base.seconds*1e3:.3f} ms, {base.num_kernels} kernels')\n"
                  "print(f'forbid {top.edge}: {forbidden.seconds*1e3:.3f} ms, {forbidden.num_kernels} kernels')\n"
                  "assert forbidden.seconds >= base.seconds"),
    new_markdown_cell("## Force a decision the `xla` strategy does not make\n\nThe attention score matmul "
                      "feeding the softmax's exp is not fused by `xla` (a matmul result stays a fusion root "
                      "when another matmul reads it); force one such edge and price it."),
    new_code_cell("aggr = set(Fuse(strategy='aggressive').candidates(prog, h100))\n"
                  "xla = set(Fuse(strategy='xla').candidates(prog, h100))\n"
                  "extra = sorted(e for e in aggr - xla if e[1] >= 0)\n"
                  "print(len(extra), 'decisions only the aggressive strategy makes')\n"
                  "forced = explorer.estimate(prog, h100, pipeline=with_fusion_edges('fuse{strategy=xla}', force=extra[:1]))\n"
                  "print(f'force {extra[0]}: {forced.seconds*1e3:.3f} ms, {forced.num_kernels} kernels')"),
    new_markdown_cell("## Where the time goes after fusion"),
    new_code_cell("print(base.table(top=10))"),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
nbformat.write(nb, "examples/fusion_exploration.ipynb")
print("wrote examples/fusion_exploration.ipynb")
