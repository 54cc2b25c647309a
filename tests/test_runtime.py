"""What every stage's start-up costs. The linear probe's stages do not load torch's compiler
(torch._dynamo: seconds of every stage's start-up) unless something compiles, and still run
with deterministic algorithms. (Fine-tuning loads it anyway: torchvision imports it, and so
does every AdamW or SGD step, torch's ``_use_grad_for_differentiable``.) The environment
record reads package versions from metadata headers, and must agree with the full parse."""

from __future__ import annotations

import subprocess
import sys

TRAIN = """
import sys, torch
from transferlab.runtime import configure_runtime
configure_runtime(1, torch.device("cpu"), compiles={compiles})
torch.manual_seed(0)
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
print(*net.weight.flatten().tolist(), torch.are_deterministic_algorithms_enabled(), "torch._dynamo" in sys.modules)
"""


def test_a_probe_fit_imports_the_compiler_only_when_compiling_and_computes_the_same():
    """Fresh interpreters (this one may have imported the compiler already); handing the
    optimizer's wrappers their own functions changes nothing computed."""
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
    assert outs[False][:-2] == outs[True][:-2] and len(outs[False]) == 8  # the 6 weights


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
