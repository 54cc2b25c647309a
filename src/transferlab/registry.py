"""The one table of models transferlab compares: every other module reads it.

A model is either *two-stage* (a head trained on the cached features of extract-features,
stage ``train-head``) or *end to end* (backbone and head trained together from images,
stage ``finetune-<name>``). Everything that differs between models and is not their own
training code is an attribute here: the report's description, whether the backbone starts
pretrained, whether the model starts from the linear probe, which family of the decision
matrix it belongs to, what trains at the start.

Adding a strategy is one :func:`register` call below, its params section (a
:class:`~transferlab.config.StrategyConfig` subclass decorated with
:func:`~transferlab.config.strategy_params`), and a ``finetune-<name>`` block in dvc.yaml
(tests/test_registry.py checks all three are there). Registering a name twice is an error:
a second entry would silently replace the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["two-stage", "end-to-end"]
# The decision matrix's families (transferlab.verdict.recommend): what a rule of thumb recommends.
Family = Literal["feature-extraction", "fine-tuning", "baseline"]
# What trains when training starts (end-to-end): nothing of the backbone, its last blocks
# (``unfreeze_blocks``), or all of it; progressive adds blocks later, by epoch. The
# parameter-efficient strategies train a small subset everywhere: every bias, every
# normalisation scale and shift, or LoRA adapters added to the frozen weights.
Unfreeze = Literal["none", "last-blocks", "all", "biases", "norms", "lora"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    description: str
    family: Family
    pretrained: bool = True
    # Starts from train-head's linear probe of the same seed (needs the ``features`` model).
    from_probe: bool = False
    # Two-stage: also trains on the augmented views extract-features stores.
    augmented_views: bool = False
    unfreeze: Unfreeze = "none"
    # End-to-end: trains with another strategy's recipe (its params section but ``lr``).
    recipe_of: str | None = None
    # The decision matrix's scenarios (transferlab.verdict.recommend.SCENARIOS) whose advice this
    # model follows: 1 small/similar, 2 large/similar, 3 small/different, 4 large/different.
    scenarios: tuple[int, ...] = ()
    # End-to-end: the params class of ``finetune.<name>``, set by config.strategy_params.
    params: Any = field(default=None, compare=False)

    @property
    def two_stage(self) -> bool:
        return self.kind == "two-stage"

    @property
    def section(self) -> str:
        """Its attribute in the finetune params (``lp-ft`` -> ``lp_ft``)."""
        return self.name.replace("-", "_")


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    if spec.recipe_of is not None and spec.recipe_of not in _REGISTRY:
        raise ValueError(f"model {spec.name!r}: recipe_of {spec.recipe_of!r} is not registered before it")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}") from None


def all_models() -> list[ModelSpec]:
    return list(_REGISTRY.values())


def names(kind: Kind | None = None) -> tuple[str, ...]:
    """Registered model names (of one ``kind``), in registration order."""
    return tuple(s.name for s in _REGISTRY.values() if kind is None or s.kind == kind)


def in_family(family: Family) -> tuple[str, ...]:
    return tuple(s.name for s in _REGISTRY.values() if s.family == family)


def advised_in(scenario: int) -> tuple[str, ...]:
    """The models that follow the decision matrix's advice for ``scenario``."""
    return tuple(s.name for s in _REGISTRY.values() if scenario in s.scenarios)


def attach_params(name: str, params: type) -> None:
    """Record the params class of end-to-end model ``name`` (config.strategy_params)."""
    spec = get(name)
    if spec.kind != "end-to-end":
        raise ValueError(f"{name!r} is not an end-to-end strategy: it has no finetune params")
    if spec.params is not None:
        raise ValueError(f"finetune params of {name!r} are defined twice")
    object.__setattr__(spec, "params", params)


# ---------------------------------------------------------------------------- the models
register(
    ModelSpec(
        "features",
        "two-stage",
        "two-stage: head on cached features, no augmentation",
        "feature-extraction",
        scenarios=(1,),
    )
)
register(
    ModelSpec(
        "features-augmented",
        "two-stage",
        "two-stage: head on cached features of K augmented views per image",
        "feature-extraction",
        augmented_views=True,
        scenarios=(1,),
    )
)
register(
    ModelSpec(
        "frozen",
        "end-to-end",
        "end to end, backbone frozen, augmented images",
        "feature-extraction",
        unfreeze="none",
        scenarios=(1,),
    )
)
register(
    ModelSpec(
        "partial",
        "end-to-end",
        "end to end, last blocks unfrozen",
        "fine-tuning",
        unfreeze="last-blocks",
        scenarios=(3,),
    )
)
register(
    ModelSpec(
        "full",
        "end-to-end",
        "end to end, everything trainable, backbone at a lower rate",
        "fine-tuning",
        unfreeze="all",
        scenarios=(2, 4),
    )
)
register(
    ModelSpec(
        "progressive",
        "end-to-end",
        "end to end, blocks unfrozen top-down over the run, deeper at lower rates",
        "fine-tuning",
        unfreeze="none",
        scenarios=(2, 3, 4),
    )
)
register(
    ModelSpec(
        "lp-ft",
        "end-to-end",
        "end to end from the linear probe's head, everything trainable",
        "fine-tuning",
        from_probe=True,
        unfreeze="all",
        recipe_of="full",
        scenarios=(2, 4),
    )
)
# Parameter-efficient fine-tuning: opt-in (empty grids in params.yaml). Each adapts the whole
# backbone through a small set of tensors, so a task costs kilobytes to megabytes on top of a
# shared backbone instead of a copy of it.
register(
    ModelSpec(
        "bitfit",
        "end-to-end",
        "end to end, only the backbone's biases (and the head) train (BitFit)",
        "fine-tuning",
        unfreeze="biases",
    )
)
register(
    ModelSpec(
        "norm",
        "end-to-end",
        "end to end, only normalisation scales and shifts (and the head) train",
        "fine-tuning",
        unfreeze="norms",
    )
)
register(
    ModelSpec(
        "lora",
        "end-to-end",
        "end to end, low-rank adapters on linear and 1x1 convolution weights (LoRA), backbone frozen",
        "fine-tuning",
        unfreeze="lora",
    )
)
register(
    ModelSpec(
        "scratch",
        "end-to-end",
        "same architecture from random weights, everything trainable",
        "baseline",
        pretrained=False,
        unfreeze="all",
    )
)
