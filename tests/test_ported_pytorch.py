"""examples/ported_pytorch.py: a PyTorch script that runs on gradflow with only its import lines changed."""
import importlib.util
import pathlib

import numpy
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "ported_pytorch.py"
GF_IMPORTS = ("import gradflow as torch", "from gradflow.interop import load_file, save_file")
TORCH_IMPORTS = ("import torch", "from safetensors.torch import load_file, save_file")


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_torch_script(tmp_path):
    """The original PyTorch script: the two marked import lines swapped back, nothing else."""
    lines = SCRIPT.read_text().splitlines()
    changed = 0
    for i, line in enumerate(lines):
        for ours, theirs in zip(GF_IMPORTS, TORCH_IMPORTS):
            if line.startswith(ours):
                lines[i] = theirs
                changed += 1
    assert changed == 2, "the script must differ from its PyTorch original in exactly the two import lines"
    path = tmp_path / "ported_torch.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_runs_on_gradflow_with_workers_and_checkpoint(tmp_path):
    mod = _load(SCRIPT, "ported_gf")
    result = mod.main(epochs=3, samples=400, out=str(tmp_path), num_workers=2, verbose=False)
    assert result["val_acc"] > 0.9, result
    assert result["restored_acc"] == result["val_acc"] and result["restored_loss"] == pytest.approx(result["val_loss"])
    assert pathlib.Path(result["checkpoint"]).exists()


def test_same_script_runs_on_pytorch_and_checkpoints_interchange(tmp_path):
    torch = pytest.importorskip("torch")
    tmod = _load(_as_torch_script(tmp_path), "ported_torch")
    result = tmod.main(epochs=2, samples=400, out=str(tmp_path / "torch"), num_workers=0, verbose=False)
    assert result["val_acc"] > 0.9
    # the checkpoint PyTorch wrote loads into the gradflow model and gives the same logits
    gmod = _load(SCRIPT, "ported_gf2")
    net = gmod.Net()
    net.load_state_dict(gmod.load_file(result["checkpoint"]))
    tnet = tmod.Net()
    tnet.load_state_dict(tmod.load_file(result["checkpoint"]))
    x = numpy.random.default_rng(0).standard_normal((16, 2)).astype(numpy.float32)
    with torch.no_grad():
        want = tnet(torch.tensor(x)).numpy()
    got = net(gmod.torch.tensor(x)).numpy()
    numpy.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
