"""Every script in examples/ runs to completion and prints what the walkthrough says it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from resnet_inspect.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT_S = 180
# One thread per script: the suite runs on two workers, and these small tensors gain nothing from more.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Lines each script must print; a new script without an entry must still exit 0 and print something.
EXPECTED: dict[str, tuple[str, ...]] = {
    "compare_depths.py": ("resnet152    152  3-8-36-3   60,192,808  11,513,626,624", "resnet50      50   3-4-6-3"),
    "convolution_arithmetic.py": ("k=3 p=1: o = i = 56", "k=4 p=2: o = (56 - 4) + 2*2 + 1 = 57  grows by one"),
    "inspect_model.py": ("parameters 11,689,512   MACs 1,814,073,344", "receptive field 435, effective stride 32"),
    "load_torchvision_weights.py": (
        "encoder.layers.1.blocks.0.shortcut.conv.weight       -> layer2.0.downsample.0.weight",
        "refused: state_dict does not fit this model in torchvision's layout; missing keys (1): fc.bias",
    ),
    "receptive_field.py": ("gradient support of each stage's centre unit: [3, 15, 43, 43] (agrees: True)",
                           "[3, 15, 67, 67] (agrees: True)"),
    "seed_bugs.py": ("AttributeError: cannot assign module before Module.__init__() call",
                     "TypeError: conv_bn() missing 1 required positional argument: 'convolution'"),
    "verify_padding.py": ("good_cnn: 4 layers checked, 0 failed", "seed_style_cnn: 4 layers checked, 1 failed"),
}


def test_there_are_at_least_five_examples_and_each_expectation_names_one():
    names = {path.name for path in EXAMPLES}
    assert len(names) >= 5
    assert set(EXPECTED) <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_runs_and_prints_its_results(script: Path):
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=False, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    for line in EXPECTED.get(script.name, ()):
        assert line in result.stdout


@pytest.mark.parametrize(("factory", "exit_code"), [("good_cnn", 0), ("seed_style_cnn", 1)])
def test_verify_padding_factories_work_as_cli_models(factory: str, exit_code: int):
    result = CliRunner().invoke(app, ["verify", f"examples/verify_padding.py:{factory}", "-i", "32", "-f", "json"])
    assert result.exit_code == exit_code
