"""Loading models as users write them: specs, factories, ecosystem names and checkpoints, with clear errors.

torchvision and timm are replaced by stand-in packages written into a temporary directory, which expose the
same entry points (`torchvision.models.list_models/get_model`, `timm.list_models/create_model`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from resnet_inspect.analysis.timing import profile_layers, time_model
from resnet_inspect.capture.loader import load_model
from resnet_inspect.cli.app import app
from resnet_inspect.errors import FactoryError, InspectError, ModelNotFoundError
from resnet_inspect.models import get_model
from resnet_inspect.pipeline.rf import load_weights

REPOSITORY = Path(__file__).resolve().parent.parent
runner = CliRunner()


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


SMALL_CNN = """
    from torch import nn

    def small(num_classes=10):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))
"""


# ------------------------------------------------------------------------------------------- factory specs


def test_a_model_file_imports_its_neighbours(tmp_path):
    write(tmp_path / "project" / "layers.py", SMALL_CNN)
    path = write(tmp_path / "project" / "model.py", "from layers import small\n\ndef model():\n    return small(4)\n")
    result = runner.invoke(app, ["summary", f"{path}:model", "-i", "16", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert sys.path[0] == str(path.parent.resolve())


def test_a_package_module_is_imported_from_the_working_directory_by_the_console_script(tmp_path):
    write(tmp_path / "mypackage" / "__init__.py", "")
    write(tmp_path / "mypackage" / "nets.py", SMALL_CNN)
    # The console script's sys.path starts with its own bin directory, not the working directory.
    script = ("import sys; sys.path[0] = '/nonexistent/bin'; "
              "sys.argv = ['resnet-inspect', 'verify', 'mypackage.nets:small', '-i', '16']; "
              "from resnet_inspect.cli.app import main; main()")
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "mypackage.nets:small at 1x3x16x16: 2 checked, 0 failed" in finished.stdout


def test_a_module_instance_is_used_as_it_is(tmp_path):
    path = write(tmp_path / "model.py", "from torch import nn\nnet = nn.Sequential(nn.Conv2d(3, 5, 3))\n")
    model, _ = load_model(f"{path}:net")
    assert isinstance(model, nn.Sequential) and model[0].out_channels == 5
    result = runner.invoke(app, ["summary", f"{path}:net", "-i", "8", "-f", "json"])
    assert result.exit_code == 0, result.stderr


def test_options_cannot_be_applied_to_a_module_instance(tmp_path):
    path = write(tmp_path / "model.py", "from torch import nn\nnet = nn.Sequential(nn.Conv2d(3, 5, 3))\n")
    line = one_error_line(runner.invoke(app, ["summary", f"{path}:net", "--num-classes", "3"]))
    assert line == f"error: {path}:net is a module instance, not a factory: --num-classes cannot be applied to it"


def test_a_factory_that_needs_arguments_names_them(tmp_path):
    path = write(tmp_path / "model.py", "def build(depth, width, *, groups, bias=True):\n    pass\n")
    line = one_error_line(runner.invoke(app, ["summary", f"{path}:build"]))
    assert line == (f"error: {path}:build needs arguments depth, width, groups: give them defaults, or point MODEL "
                    "at a factory that takes none")


def test_num_classes_for_a_factory_without_that_parameter_is_an_error(tmp_path):
    path = write(tmp_path / "model.py", "from torch import nn\ndef model():\n    return nn.Conv2d(3, 4, 3)\n")
    line = one_error_line(runner.invoke(app, ["summary", f"{path}:model", "--num-classes", "5"]))
    assert line == (f"error: {path}:model has no parameter 'num_classes', so --num-classes cannot be applied; "
                    "leave the option out or add the parameter to the factory")


def test_num_classes_reaches_a_factory_that_takes_it(tmp_path):
    path = write(tmp_path / "model.py", SMALL_CNN)
    model, _ = load_model(f"{path}:small", num_classes=7)
    assert model[-1].out_features == 7


def test_the_factory_is_called_once_even_when_it_cannot_be_built_on_the_meta_device(tmp_path):
    calls = tmp_path / "calls.txt"
    path = write(tmp_path / "model.py", f"""
        import torch
        from torch import nn

        def model():
            with open({str(calls)!r}, "a") as log:
                log.write("called\\n")
            rate = torch.linspace(0, 0.2, 3)[1].item()  # like timm's drop-path rates: impossible on meta
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(rate))
        """)
    result = runner.invoke(app, ["summary", f"{path}:model", "-i", "16"])
    assert result.exit_code == 0, result.stderr
    assert calls.read_text() == "called\n"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's own notice, made here on purpose
def test_a_traced_model_is_refused_with_what_to_do(tmp_path):
    path = write(tmp_path / "model.py", """
        import torch
        from torch import nn

        def model():
            return torch.jit.trace(nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8))

        def scripted():
            return torch.jit.script(nn.Conv2d(3, 4, 3))
        """)
    for factory in ("model", "scripted"):
        line = one_error_line(runner.invoke(app, ["summary", f"{path}:{factory}"]))
        assert "is a TorchScript module" in line and "return the nn.Module before tracing or scripting it" in line


def test_a_lazy_module_names_the_layer(tmp_path):
    path = write(tmp_path / "model.py", """
        from torch import nn

        def model():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
        """)
    line = one_error_line(runner.invoke(app, ["summary", f"{path}:model"]))
    assert line == (f"error: {path}:model: 2 (LazyLinear) is a lazy module whose parameters are not initialised "
                    "yet: run one forward pass in the factory before returning the model")


def test_a_compiled_model_is_inspected_through_the_module_it_wraps(tmp_path):
    path = write(tmp_path / "model.py", """
        import torch
        from torch import nn

        def model():
            return torch.compile(nn.Sequential(nn.Conv2d(3, 4, 3)))
        """)
    model, _ = load_model(f"{path}:model")
    assert type(model) is nn.Sequential


def test_a_too_small_input_in_time_names_the_layer():
    line = one_error_line(runner.invoke(app, ["time", "tests/fixtures/cnn_zoo.py:plain_cnn", "-i", "8",
                                              "--warmup", "0", "--repeat", "1"]))
    assert line.startswith("error: input too small: 3 (Conv2d) with input 1x16x2x2 would give an output of")


# ------------------------------------------------------------------------------------ ecosystem model names

FAKE_TORCHVISION = """
    from torch import nn

    CALLS = []

    def list_models():
        return ["resnet18", "resnet50", "resnet101", "efficientnet_b0"]

    def get_model(name, weights=None, num_classes=1000):
        CALLS.append((name, weights, num_classes))
        return nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))
"""
FAKE_TIMM = """
    from torch import nn

    CALLS = []

    def list_models(pattern=None):
        return ["efficientnet_b0", "efficientnet_b1", "resnet50d"]

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3):
        CALLS.append((name, pretrained, num_classes, in_chans))
        return nn.Sequential(nn.Conv2d(in_chans, 8, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))
"""


@pytest.fixture
def ecosystem(tmp_path, monkeypatch):
    """Stand-ins for torchvision and timm, first on sys.path; returns a function giving a stand-in's calls."""
    write(tmp_path / "site" / "torchvision" / "__init__.py", "")
    write(tmp_path / "site" / "torchvision" / "models" / "__init__.py", FAKE_TORCHVISION)
    write(tmp_path / "site" / "timm" / "__init__.py", FAKE_TIMM)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("torchvision", "torchvision.models", "timm"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return lambda module: sys.modules[module].CALLS


def test_a_torchvision_name_is_built_by_torchvision_without_weights(ecosystem):
    result = runner.invoke(app, ["summary", "torchvision:resnet50", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert ecosystem("torchvision.models") == [("resnet50", None, 1000)]


SEGMENTATION_TORCHVISION = """
    from torch import nn

    CALLS = []

    def fcn_resnet50(*, weights=None, progress=True, num_classes=None, aux_loss=None,
                     weights_backbone="ResNet50_Weights.IMAGENET1K_V1", **kwargs):
        \"\"\"torchvision's segmentation builders: the backbone's ImageNet weights unless told otherwise.\"\"\"
        CALLS.append(("fcn_resnet50", weights, weights_backbone))
        if weights is not None or weights_backbone is not None:
            raise RuntimeError(f"would download {weights or weights_backbone}")
        return nn.Sequential(nn.Conv2d(3, 8, 3, stride=8, padding=1), nn.Conv2d(8, num_classes or 21, 1))

    def resnet18(*, weights=None, progress=True, **kwargs):
        CALLS.append(("resnet18", weights, None))
        return nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    BUILDERS = {"fcn_resnet50": fcn_resnet50, "resnet18": resnet18}

    def list_models():
        return list(BUILDERS)

    def get_model_builder(name):
        return BUILDERS[name]

    def get_model(name, **config):
        return BUILDERS[name](**config)
"""


@pytest.fixture
def segmentation_torchvision(tmp_path, monkeypatch):
    """A torchvision stand-in whose segmentation builder refuses to fetch backbone weights; returns its calls."""
    write(tmp_path / "site" / "torchvision" / "__init__.py", "")
    write(tmp_path / "site" / "torchvision" / "models" / "__init__.py", SEGMENTATION_TORCHVISION)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("torchvision", "torchvision.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return lambda: sys.modules["torchvision.models"].CALLS


@pytest.mark.parametrize("command", ["summary", "verify", "rf"])
def test_a_torchvision_segmentation_name_fetches_no_backbone_weights(segmentation_torchvision, command):
    result = runner.invoke(app, [command, "torchvision:fcn_resnet50", "-i", "64", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert segmentation_torchvision() == [("fcn_resnet50", None, None)]


def test_a_torchvision_builder_without_a_backbone_gets_only_weights_none(segmentation_torchvision):
    result = runner.invoke(app, ["summary", "torchvision:resnet18", "-i", "64", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert segmentation_torchvision() == [("resnet18", None, None)]


def test_a_timm_name_is_built_by_timm_without_weights(ecosystem):
    result = runner.invoke(app, ["verify", "timm:efficientnet_b0", "--num-classes", "10", "--in-channels", "1"])
    assert result.exit_code == 0, result.stderr
    assert ecosystem("timm") == [("efficientnet_b0", False, 10, 1)]


@pytest.mark.parametrize(("spec", "suggestions"), [
    ("torchvision:resnet5", {"resnet50", "resnet18"}),
    ("timm:efficientnet_b", {"efficientnet_b0", "efficientnet_b1"}),
])
def test_a_typo_in_an_ecosystem_name_gets_the_close_matches(ecosystem, spec, suggestions):
    line = one_error_line(runner.invoke(app, ["summary", spec]))
    package, _, name = spec.partition(":")
    assert line.startswith(f"error: unknown {package} model '{name}'; did you mean ")
    assert suggestions <= set(line.removesuffix("?").split("did you mean ")[1].split(", "))


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_a_missing_package_names_the_extra_to_install(package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    monkeypatch.delitem(sys.modules, f"{package}.models", raising=False)
    line = one_error_line(runner.invoke(app, ["summary", f"{package}:resnet50"]))
    assert f"pip install 'resnet-inspect[{package}]'" in line


def test_in_channels_sets_the_input_of_a_factory_without_that_parameter(tmp_path):
    path = write(tmp_path / "model.py", "from torch import nn\ndef model():\n    return nn.Conv2d(1, 4, 3)\n")
    result = runner.invoke(app, ["summary", f"{path}:model", "--in-channels", "1", "-i", "8", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["input_shape"] == [1, 1, 8, 8]


def test_the_extras_are_declared():
    import tomllib

    extras = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("torchvision") for requirement in extras["torchvision"])
    assert any(requirement.startswith("timm") for requirement in extras["timm"])


def test_unknown_ecosystem_name_is_a_model_not_found_error(ecosystem):
    with pytest.raises(ModelNotFoundError):
        load_model("timm:resnet9000")
    with pytest.raises(FactoryError, match="has no parameter 'num_classes'"):
        load_model(f"{Path(__file__).parent}/fixtures/cnn_zoo.py:liar_cnn", num_classes=3)


# -------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return get_model("resnet20")


def test_a_checkpoint_wrapped_in_model_or_state_dict_is_unwrapped(resnet20, tmp_path):
    for key in ("model", "state_dict"):
        path = tmp_path / f"{key}.pth"
        torch.save({key: resnet20.state_dict(), "epoch": torch.tensor(90)}, path)
        fresh = get_model("resnet20")
        assert load_weights(fresh, path) == str(path)
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), resnet20.state_dict().values(),
                                                        strict=True))


def test_a_data_parallel_prefix_is_removed(resnet20, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{key}": value for key, value in resnet20.state_dict().items()}, path)
    fresh = get_model("resnet20")
    load_weights(fresh, path)
    assert torch.equal(fresh.state_dict()["decoder.fc.weight"], resnet20.state_dict()["decoder.fc.weight"])


def test_keys_that_do_not_fit_are_named_in_full_and_the_model_is_untouched(resnet20, tmp_path):
    state = dict(resnet20.state_dict())
    missing = [key for key in state if key.startswith("encoder.layers.2.")]
    for key in missing:
        del state[key]
    state["extra.weight"] = torch.zeros(1)
    state["decoder.fc.weight"] = torch.zeros(5, 64)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    fresh = get_model("resnet20")
    before = {key: value.clone() for key, value in fresh.state_dict().items()}
    with pytest.raises(InspectError) as refused:
        load_weights(fresh, path)
    message = str(refused.value)
    assert "\n" not in message
    assert f"missing keys ({len(missing)}): {', '.join(missing)}" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "shape mismatches (1): decoder.fc.weight (checkpoint (5, 64), model (10, 64))" in message
    assert all(torch.equal(before[key], value) for key, value in fresh.state_dict().items())


WEIGHT_FILES = {
    "an empty file": (lambda path: path.write_bytes(b""), "the file is empty"),
    "a text file": (lambda path: path.write_text("not a checkpoint"), "not a PyTorch checkpoint"),
    "a pickled model": (lambda path: torch.save(nn.Conv2d(3, 4, 3), path),
                        "(torch.nn.modules.conv.Conv2d), not only tensors, and torch.load(weights_only=True) "
                        "refuses it; save a state_dict instead: torch.save(model.state_dict(), 'weights.pt')"),
    "a list of tensors": (lambda path: torch.save([torch.zeros(1)], path), "does not hold a state_dict"),
}


@pytest.mark.parametrize("case", WEIGHT_FILES)
def test_a_weights_file_that_cannot_be_used_says_why(case, tmp_path):
    make, reason = WEIGHT_FILES[case]
    weights, target = tmp_path / "weights.pth", tmp_path / "out.json"
    make(weights)
    line = one_error_line(runner.invoke(app, ["rf", "resnet20", "--weights", str(weights), "-o", str(target)]))
    assert reason in line
    assert sorted(tmp_path.iterdir()) == [weights]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_weights_file_says_why(tmp_path):
    weights = tmp_path / "weights.pth"
    torch.save({}, weights)
    weights.chmod(0)
    line = one_error_line(runner.invoke(app, ["rf", "resnet20", "--weights", str(weights)]))
    assert "Permission denied" in line


# ------------------------------------------------------------------------------ the timing API and the model


def test_timing_leaves_the_callers_model_as_it_was(resnet20):
    model = resnet20.train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    time_model(model, (1, 3, 32, 32), dtype="bfloat16", channels_last=True, warmup=0, repeat=1)
    profile_layers(model, (1, 3, 32, 32), dtype="bfloat16", channels_last=True, warmup=0, repeat=1)
    assert all(module.training for module in model.modules())
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key])
        if value.dim() == 4:
            assert value.is_contiguous() and not value.is_contiguous(memory_format=torch.channels_last)


def test_timing_in_the_models_own_dtype_restores_its_mode(resnet20):
    model = resnet20.train()
    time_model(model, (1, 3, 32, 32), warmup=0, repeat=1)
    assert all(module.training for module in model.modules())
    model.eval()
    time_model(model, (1, 3, 32, 32), warmup=0, repeat=1)
    assert not any(module.training for module in model.modules())
