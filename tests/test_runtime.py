"""What every stage's start-up costs. Stages that never compile do not load torch's compiler
(torch._dynamo: seconds of every stage's start-up), neither for the linear probe nor for
fine-tuning through torchvision's transforms and models with AdamW and SGD, and they compute
exactly what they compute with it loaded. The environment record reads package versions from
metadata headers, and must agree with the full parse."""

from __future__ import annotations

import subprocess
import sys

TRAIN = """
import sys, torch
from transferlab.runtime import configure_runtime
configure_runtime(1, torch.device("cpu"), compiles={compiles})
from torchvision import tv_tensors
from torchvision.models import resnet18
from torchvision.transforms import v2
torch.manual_seed(0)
out = []
# the linear probe: LBFGS
net = torch.nn.Linear(3, 2)
x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
lbfgs = torch.optim.LBFGS(net.parameters(), max_iter=3)
def closure():
    lbfgs.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    return loss
lbfgs.step(closure)
lbfgs.state_dict()
out += net.weight.flatten().tolist()
# fine-tuning: a torchvision model on augmented images, AdamW on the head, SGD on the rest
model = resnet18(num_classes=2)
images = tv_tensors.Image(torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8))
augment = v2.Compose([v2.RandomResizedCrop(32, antialias=True), v2.ToDtype(torch.float32, scale=True)])
adamw = torch.optim.AdamW(model.fc.parameters(), lr=1e-2)
sgd = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("fc")], lr=1e-2, momentum=0.9)
for _ in range(2):
    batch = augment(images)
    assert type(batch) is tv_tensors.Image  # torchvision's wrap, deferred-disabled, ran
    loss = torch.nn.functional.cross_entropy(model(batch.as_subclass(torch.Tensor)), torch.tensor([0, 1, 0, 1]))
    adamw.zero_grad(), sgd.zero_grad()
    loss.backward()
    adamw.step(), sgd.step()
    assert torch.is_grad_enabled()  # the step put grad mode back
out += [model.fc.bias.sum().item(), model.conv1.weight.sum().item()]
out += [torch.are_deterministic_algorithms_enabled(), "torch._dynamo" in sys.modules]
print(*out)
# nothing torchvision saw at import is left behind: the compiler still imports and compiles
assert torch.compiler.disable.__module__ == "torch.compiler"
assert {compiles} or (torch.compile(net, backend="eager")(x) == net(x)).all()
"""


def test_stages_import_the_compiler_only_when_compiling_and_compute_the_same():
    """Fresh interpreters (this one may have imported the compiler already): taking the
    compiler out of torchvision's import and the optimizers changes nothing computed."""
    outs = {
        compiles: subprocess.run(
            [sys.executable, "-c", TRAIN.format(compiles=compiles)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for compiles in (False, True)
    }
    assert outs[False][-2:] == ["True", "False"]  # deterministic, no compiler
    assert outs[True][-2:] == ["True", "True"]
    assert outs[False][:-2] == outs[True][:-2] and len(outs[False]) == 10  # 6 weights, 2 sums


def test_installed_packages_reads_what_the_full_metadata_says():
    """The environment record reads each distribution's headers only (start-up time); it
    must name the same distributions at the same versions as the full metadata parse."""
    import importlib.metadata

    from transferlab.runtime import installed_packages

    full = {}
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"]:
            full[dist.metadata["Name"].lower()] = dist.version
    assert installed_packages() == dict(sorted(full.items()))
    assert installed_packages()["torch"] == "2.14.1"


def test_metadata_headers_end_at_the_first_empty_line_only(monkeypatch):
    """A folded header may hold a line of spaces; the description after the empty line may
    say "Name:" too. Neither changes what the headers say."""
    import importlib.metadata

    from transferlab import runtime

    class Dist:
        def read_text(self, name):
            text = "Metadata-Version: 2.1\nLicense: first line\n    \n  more\nName: real\nVersion: 1.0\n\nName: not\n"
            return text if name == "METADATA" else None

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [Dist()])
    assert runtime.installed_packages() == {"real": "1.0"}
