"""The README's API example runs as printed."""

import re
from pathlib import Path


def test_readme_api_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)  # noqa: S102
    assert ns["ys"].shape == (8, 50, 16)
    assert ns["h"].shape == (8, 16)
    assert ns["grads"].cell.w.shape == (16, 16)
    assert ns["tsit5"].cell.solver.__class__.__name__ == "Tsit5"
