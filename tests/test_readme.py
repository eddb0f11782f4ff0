"""The README's Python examples run as written (on the authors' weights in place of `make demo`'s run,
and on 8 images instead of 200, so the suite stays fast)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 4, "README lost its examples"
    return "\n".join(blocks)


def test_readme_examples_run(authors_dir, capsys):
    code = _examples()
    assert "runs/demo" in code and "[:200]" in code  # the substitutions below still apply
    scope: dict = {}
    exec(compile(code.replace("runs/demo", str(authors_dir)).replace("[:200]", "[:8]"), str(README), "exec"),
         scope)
    out = capsys.readouterr().out
    assert "'logits': (8, 2)" in out  # the trace example printed every layer
    assert scope["res"].n == 8 and scope["res"].stages  # AutoAttack ran stage by stage
    assert scope["attr"].shape == scope["x"].shape and scope["cf"].counterfactual.shape == scope["x"].shape
    assert scope["d"].shape == (16, 100) and scope["rejected"].dtype == torch.bool


def test_readme_is_a_users_readme():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert not re.search(r"session|this machine|earlier machines", text, re.I)
    for link in re.findall(r"\]\(([^)#]+)\)", text):  # every relative link points into the repository
        if not link.startswith(("http://", "https://")):
            assert (README.parent / link).exists(), link
