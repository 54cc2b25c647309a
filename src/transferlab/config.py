"""Typed, validated configuration for every pipeline stage.

Params flow one way: ``params.yaml`` -> one of the models below -> plain function arguments.
Library code never reads ``params.yaml``; the stage scripts call :func:`load_params` and hand
the validated objects on. Every model forbids unknown keys, so a typo such as ``learning_rate``
instead of ``lr`` fails at the start of the stage with one line naming the key, instead of
being silently ignored for an hour of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from transferlab import registry
from transferlab.errors import ConfigError

PositiveFloat = Annotated[float, Field(gt=0)]
# A split fraction: every split must exist, so 0 is refused here rather than failing later.
Fraction = Annotated[float, Field(gt=0, lt=1)]
# A learning-rate grid: each value is its own run, the pick is made on validation. An empty
# list skips the strategy (DVC's matrix then has no stage for it).
LrGrid = list[PositiveFloat]
# DataLoader worker processes: a count, or "auto" (transferlab.runtime.resolve_workers).
Workers = Literal["auto"] | Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    # Lax type coercion on purpose: PyYAML reads ``1e-3`` as a string (YAML 1.1 wants a dot),
    # and that is what users and ``dvc exp run -S lr=1e-3`` write. Unknown keys stay errors.
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseConfig(_Strict):
    """Shared by every stage: what makes runs comparable and repeatable."""

    @model_validator(mode="after")
    def _seeds(self) -> BaseConfig:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must list at least one seed, each once")
        if self.folds > 1:
            return self._check_folds()
        if self.repeats > 1:
            raise ValueError(
                f"repeats: {self.repeats} re-draws the partition of k-fold cross-validation; it "
                "needs folds >= 2 (with one hold-out split, splits re-draws the splitting)"
            )
        unused = sorted(set(range(self.splits)) - {s % self.splits for s in self.seeds})
        if unused:
            raise ValueError(
                f"splits: {self.splits} splittings, but no seed in seeds {self.seeds} uses "
                f"splitting(s) {unused} (seed s uses splitting s mod splits): add seeds or "
                "lower splits"
            )
        return self

    def _check_folds(self) -> BaseConfig:
        """k-fold cross-validation tests every image once per repeat, so every splitting (fold
        of a partition) needs as many seeds as every other (seed s is tested on splitting s
        mod folds x repeats: partition (s mod folds x repeats) // folds, fold s mod folds)."""
        k, r = self.folds, self.repeats
        if self.splits > 1:
            # Folds already re-draw what is tested (every image once); re-drawn splittings on
            # top would test images an unequal number of times, and the pooled test needs one
            # prediction per image and repeat. base.repeats re-draws the partition instead.
            raise ValueError(
                f"folds: {k} and splits: {self.splits} cannot be combined; with folds every "
                f"image is tested once per repeat: use splits: 1, and repeats: 3 with seeds "
                f"0..{3 * k - 1} to re-draw the partition three times"
            )
        n = k * r
        uses = [sum(1 for s in self.seeds if s % n == j) for j in range(n)]
        if len(set(uses)) > 1:
            untested = [j for j in range(n) if uses[j] == 0]
            what = f"{k} folds" if r == 1 else f"{r} partitions of {k} folds ({n} fold models)"
            unit = "fold" if r == 1 else "splitting"
            detail = f"leave {unit}(s) {untested} untested" if untested else f"test the {unit}s {uses} times"
            raise ValueError(
                f"folds: {what} (seed s is tested on {unit} s mod {n}), but seeds {self.seeds} "
                f"{detail}; every {unit} needs as many seeds, e.g. seeds {list(range(n))}"
            )
        return self

    @property
    def splittings(self) -> int:
        """How many train/val/test splittings the manifest carries: one per fold of every
        partition (folds x repeats), or ``splits``. Seed s trains and is scored on splitting
        s mod this."""
        return self.folds * self.repeats if self.folds > 1 else self.splits

    # The data: splits and the augmented views of features-augmented.
    seed: Annotated[int, Field(ge=0)] = 0
    # Training runs: every model is trained once per seed (initialization, shuffling,
    # augmentation), and reported as mean and spread.
    seeds: list[Annotated[int, Field(ge=0)]] = [0]
    # Splittings of the data: seed s trains and is scored on splitting s mod splits, so with
    # more seeds than splittings the report tells split spread from seed spread.
    splits: Annotated[int, Field(ge=1)] = 1
    # k-fold cross-validation (k >= 2): every image is tested once, by a model that never saw
    # it; seed s is tested on fold s mod k (trained on the others). 1: one hold-out split.
    folds: Annotated[int, Field(ge=1)] = 1
    # Repeated k-fold: the partition into folds re-drawn this many times (fresh folds, not
    # only fresh seeds), folds x repeats fold models in all. The verdict's test counts the
    # fold models' own variation, so its power grows with them (docs/verdict.md: about 15).
    repeats: Annotated[int, Field(ge=1)] = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # 0 means "let torch decide"; a fixed count makes CPU timings comparable across runs.
    num_threads: Annotated[int, Field(ge=0)] = 0
    # Decoded images kept in memory per image stage (extract-features, each finetune run);
    # beyond it images are decoded as they are read. Results do not depend on it.
    image_cache_mb: Annotated[int, Field(ge=0)] = 1024
    # Image and weight layout: auto (channels-last on CPU, contiguous on CUDA), true, false.
    channels_last: Literal["auto"] | bool = "auto"


class DownloadConfig(_Strict):
    """Where the images come from and how they are split.

    Sources: ``digits`` (embedded, offline), ``folder`` (``path`` holds ``<class>/*`` or
    ``{train,val,test}/<class>/*``), ``url`` (a zip/tar archive of such a folder, pinned by
    ``sha256``), ``torchvision`` (``dataset`` by name, from ``root`` or downloaded).
    """

    source: Literal["digits", "folder", "url", "torchvision"] = "digits"
    # folder: the image folder. DVC tracks it as a dependency, so edits to it re-run download.
    path: str = "data/images"
    url: str | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    dataset: str | None = None
    root: str | None = None  # torchvision: where the data set is (or goes)
    download: bool = False  # torchvision: allowed to fetch it from the internet
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    # Small-data studies: keep at most this many images per class (None: all) ...
    max_per_class: Annotated[int, Field(ge=3)] | None = None
    # ... and only these classes (None: all).
    classes: list[str] | None = None
    # Unreadable, non-image or duplicated files: stop ("fail") or leave them out ("skip").
    on_bad: Literal["fail", "skip"] = "fail"

    @model_validator(mode="after")
    def _check(self) -> DownloadConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        if self.source == "url" and not (self.url and self.sha256):
            raise ValueError("source 'url' needs url and sha256 (the archive's SHA-256, to verify it)")
        if self.source == "torchvision" and not self.dataset:
            raise ValueError("source 'torchvision' needs dataset (e.g. CIFAR10)")
        if self.classes is not None and len(self.classes) < 2:
            raise ValueError("classes must name at least 2 classes")
        return self


# backbone.name's special value: the arms run on the screened candidate with the best probe
# on validation (stage choose-backbone), among those with weights (random ones are floors).
BEST_PROBE = "best-probe"


class CandidateConfig(_Strict):
    """One backbone to screen. Every key is spelled out: dvc.yaml passes them to the stage
    command, so a candidate's stage re-runs when its own entry changes and no other's."""

    name: str
    image_size: Annotated[int, Field(ge=16, le=1024)]
    # pretrained: the registered weights (offline for efficientnet_lite0; torchvision's
    # download otherwise); random: no pretraining, the floor; or a local state-dict file
    weights: str


class BackboneConfig(_Strict):
    """The pretrained network, shared by extract-features and every end-to-end strategy."""

    name: str = "efficientnet_lite0"
    # Side length the images are resized to. The backbone's native size (224 for most
    # ImageNet models) is best for accuracy; the default 64 keeps a CPU run to minutes.
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    # Evaluation crop: resize to image_size / crop_pct, centre-crop image_size (null: the
    # backbone's own, 0.875 for ImageNet models). 1.0 keeps borders, right for tight crops
    # such as the default digits.
    crop_pct: Annotated[float, Field(gt=0, le=1)] | None = 1.0
    # Optional local state-dict file that replaces the registered weights.
    weights: str | None = None
    # Backbones to screen by linear probe and transferability scores, each on its own store
    # (stage screen-backbone; transferlab.features.transferability): [] screens nothing. The arms
    # run on ``name`` above; the report names the probe's pick among the candidates.
    candidates: list[CandidateConfig] = []

    @model_validator(mode="after")
    def _distinct(self) -> BackboneConfig:
        seen = [c.model_dump_json() for c in self.candidates]
        if len(set(seen)) != len(seen):
            raise ValueError("candidates lists a backbone twice")
        if self.name == BEST_PROBE and not any(c.weights != "random" for c in self.candidates):
            raise ValueError(
                f"name: {BEST_PROBE} picks among the candidates, but none has weights other than random"
            )
        return self


class AugmentConfig(_Strict):
    """Training-time augmentation, shared by the end-to-end strategies and by the augmented
    views extracted for ``features-augmented``, so both see the same distribution."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    rotation_degrees: Annotated[float, Field(ge=0, le=180)] = 10.0
    # Off by default: flipping changes the meaning of digits, text and many medical images.
    hflip: bool = False

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must be [low, high] with 0 < low <= high <= 1")
        return self


class ExtractConfig(_Strict):
    # 64 was faster than 128 on a 2-core CPU (bench/results/cpu-2cores.md)
    batch_size: Annotated[int, Field(ge=1)] = 64
    num_workers: Workers = "auto"
    # Augmented views of every training image to extract once, for ``features-augmented``
    # (0: none). Costs this many extra passes over the training images, once.
    augment_views: Annotated[int, Field(ge=0, le=100)] = 4
    # bfloat16 autocast for the forward pass (the features are stored as float32). Off by
    # default: on CPUs without bf16 units it is slower.
    amp: bool = False
    # Rows per Zarr shard: the unit of work of each torchrun process and of resuming an
    # interrupted extraction (each shard is written whole, by one process).
    shard_rows: Annotated[int, Field(ge=1)] = 16384


class OptimConfig(_Strict):
    """What every mini-batch training run shares: the loop, the optimizer, the schedule."""

    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 64
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # Linear warm-up over this many epochs, then cosine decay to zero.
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    # Stop when validation loss has not improved for this many epochs (0: never). The
    # weights of the epoch with the lowest validation loss are kept either way.
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check_warmup(self) -> OptimConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        return self


def _check_grid(grid: list[float], what: str) -> None:
    # DVC's matrix silently merges equal values: refuse them instead of training fewer runs.
    if len({float(v) for v in grid}) != len(grid):
        raise ValueError(f"{what} lists a value twice")


class HeadConfig(_Strict):
    """The classifier put on top of the pooled backbone features."""

    kind: Literal["linear", "mlp"] = "linear"
    hidden: Annotated[int, Field(ge=1)] = 256
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5


class LinearProbeConfig(_Strict):
    """A linear head fitted the way linear probes are in the literature (Kornblith et al.
    2019; CLIP): multinomial logistic regression on standardized features, trained to
    convergence with full-batch L-BFGS, its L2 strength chosen on the validation split."""

    # Penalty l2/2 * ||W||^2 added to the mean cross-entropy; one fit per value, warm-started
    # from the strongest. sklearn's C corresponds to 1 / (l2 * n_train).
    l2: list[PositiveFloat] = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]
    max_iter: Annotated[int, Field(ge=1)] = 500

    @model_validator(mode="after")
    def _grid(self) -> LinearProbeConfig:
        if not self.l2:
            raise ValueError("l2 must list at least one value")
        _check_grid(self.l2, "l2")
        return self


class MlpHeadConfig(OptimConfig):
    """A one-hidden-layer head trained by mini-batch AdamW; its rate chosen on validation."""

    lr: list[PositiveFloat] = [1e-3, 3e-3]
    hidden: Annotated[int, Field(ge=1)] = 256
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5
    epochs: Annotated[int, Field(ge=1)] = 40

    @model_validator(mode="after")
    def _grid(self) -> MlpHeadConfig:
        if not self.lr:
            raise ValueError("lr must list at least one value")
        _check_grid(self.lr, "lr")
        return self


class TrainHeadConfig(_Strict):
    """The two-stage models: a head on the cached features (``features``), and on the
    features of the augmented views too (``features-augmented``)."""

    # Two-stage models of the registry (transferlab.registry) to train.
    models: list[str] = list(registry.names("two-stage"))
    # Which head: ``linear`` (the probe, settings in ``linear``) or ``mlp`` (``mlp``).
    head: Literal["linear", "mlp"] = "linear"
    linear: LinearProbeConfig = LinearProbeConfig()
    mlp: MlpHeadConfig = MlpHeadConfig()
    # "loss": weight the loss by inverse class frequency, for imbalanced data.
    class_balance: Literal["none", "loss"] = "none"
    # Training features larger than this are streamed from the store block by block instead
    # of loaded whole: memory stays bounded, at the cost of reading the store every epoch.
    memory_budget_mb: Annotated[float, Field(gt=0)] = 2048

    @model_validator(mode="after")
    def _unique(self) -> TrainHeadConfig:
        known = registry.names("two-stage")
        unknown = [m for m in self.models if m not in known]
        if unknown:
            raise ValueError(f"unknown model {unknown[0]!r}; two-stage models: {', '.join(known)}")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models lists a model twice")
        return self

    @property
    def head_config(self) -> HeadConfig:
        """The head's architecture, as checkpoints record it."""
        if self.head == "linear":
            return HeadConfig(kind="linear")
        return HeadConfig(kind="mlp", hidden=self.mlp.hidden, dropout=self.mlp.dropout)


# The keys of the one training budget every end-to-end strategy shares (finetune.budget).
BUDGET_KEYS = (
    "steps",
    "eval_every",
    "warmup_steps",
    "batch_size",
    "weight_decay",
    "label_smoothing",
    "early_stopping_patience",
    "converge_tol",
    "class_balance",
    "num_workers",
    "amp",
    "compile",
)


class StrategyConfig(_Strict):
    """One end-to-end strategy: its training runs plus what is unfrozen and how fast.

    The budget is counted in optimizer steps, not epochs: a curve point on a tenth of the
    images, a fold and the hold-out run of one strategy then train the same number of steps
    (an epoch budget would give the small subset a tenth of the updates). Keys that would do
    nothing for a strategy are refused when set (``_unused``), so that a setting never
    silently fails to apply.
    """

    _unused: ClassVar[frozenset[str]] = frozenset()

    # The learning-rate grid of the head (the backbone's rates follow from it): where the
    # search starts (finetune.search), extended past an end that validation prefers.
    lr: LrGrid = [1e-3, 3e-3, 1e-2]
    # Optimizer steps of every run; validation is scored every eval_every steps and at the
    # end, and the round with the lowest validation loss is kept.
    steps: Annotated[int, Field(ge=1)] = 500
    eval_every: Annotated[int, Field(ge=1)] = 25
    # Linear warm-up over this many steps, then cosine decay to zero at ``steps``.
    warmup_steps: Annotated[int, Field(ge=0)] = 25
    batch_size: Annotated[int, Field(ge=1)] = 32
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    # Stop after this many rounds (of eval_every steps) without a lower validation loss
    # (0: never); a run that stops so counts as converged.
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0
    # The plateau rule (docs/protocol.md): a run that reached ``steps`` converged when its
    # last quarter lowered the best validation loss by less than this fraction.
    converge_tol: Annotated[float, Field(ge=0)] = 0.05
    # "loss": weight the loss by inverse class frequency, for imbalanced data.
    class_balance: Literal["none", "loss"] = "none"
    num_workers: Workers = "auto"
    # bfloat16 autocast (CPU and CUDA). Off by default: on CPUs without bf16 units it is slower.
    amp: bool = False
    # torch.compile the model for training (compilation costs time up front).
    compile: bool = False
    # Learning rate of backbone parameters as a fraction of the head's ``lr``.
    backbone_lr_mult: Annotated[float, Field(gt=0, le=1)] = 0.1
    # BatchNorm of trainable blocks: "frozen" keeps the pretrained running statistics (eval
    # mode) while scale and shift still train; "train" re-estimates them from each batch.
    bn: Literal["frozen", "train"] = "frozen"
    # With bn: train, how fast the running statistics follow the batches. The reference
    # EfficientNet-Lite port uses TensorFlow's 0.01 (in PyTorch's convention), made for long
    # ImageNet runs; 0.1 (PyTorch's default) lets short runs catch up with their batches.
    bn_momentum: Annotated[float, Field(gt=0, le=1)] = 0.1

    @model_validator(mode="after")
    def _relevant(self) -> StrategyConfig:
        _check_grid(self.lr, "lr")
        _check_steps(self.steps, self.warmup_steps, self.eval_every)
        unused = sorted(self.model_fields_set & self._unused)
        if unused:
            raise ValueError(f"{unused[0]} has no effect on this strategy; remove it")
        if "bn_momentum" in self.model_fields_set and self.bn == "frozen":
            raise ValueError("bn_momentum has no effect with bn: frozen; remove it or set bn: train")
        if self.bn == "train" and self.batch_size < 2:
            raise ValueError(
                f"batch_size: {self.batch_size} with bn: train: BatchNorm cannot estimate statistics "
                "from one image; use a batch of at least 2, or bn: frozen"
            )
        return self


def _check_steps(steps: int, warmup: int, eval_every: int) -> None:
    if warmup >= steps:
        raise ValueError(f"warmup_steps ({warmup}) must be < steps ({steps})")
    if eval_every > steps:
        raise ValueError(f"eval_every ({eval_every}) must be <= steps ({steps})")


class BudgetConfig(_Strict):
    """``finetune.budget``: what every end-to-end strategy trains on, so that the arms differ
    only in what they train and how fast, never in how long or on what. One copy of each key
    by construction; a strategy that must deviate says so in its own ``budget`` (below), and
    the report lists the deviation next to that strategy."""

    # The defaults are StrategyConfig's: the same values, one place to read them.
    steps: Annotated[int, Field(ge=1)] = StrategyConfig.model_fields["steps"].default
    eval_every: Annotated[int, Field(ge=1)] = StrategyConfig.model_fields["eval_every"].default
    warmup_steps: Annotated[int, Field(ge=0)] = StrategyConfig.model_fields["warmup_steps"].default
    batch_size: Annotated[int, Field(ge=1)] = StrategyConfig.model_fields["batch_size"].default
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0
    converge_tol: Annotated[float, Field(ge=0)] = StrategyConfig.model_fields["converge_tol"].default
    class_balance: Literal["none", "loss"] = "none"
    num_workers: Workers = "auto"
    amp: bool = False
    compile: bool = False

    @model_validator(mode="after")
    def _check_steps(self) -> BudgetConfig:
        _check_steps(self.steps, self.warmup_steps, self.eval_every)
        return self


class SearchConfig(_Strict):
    """``finetune.search``: how each end-to-end run searches its learning rate
    (transferlab.training.search). Every rate of the strategy's grid trains the first
    ``first_rung`` of the budget; while validation prefers an end of what was tried, the
    grid grows past that end by its own ratio (at most ``max_extend`` rates); the best
    ``keep`` rates then train the whole budget and validation picks among them (``rungs``
    says whether a rung is a short run of its own or the start of the budget's).
    ``first_rung: 1.0`` trains every rate the whole budget (an exhaustive grid)."""

    first_rung: Annotated[float, Field(gt=0, le=1)] = 0.34
    keep: Annotated[int, Field(ge=1)] = 1
    max_extend: Annotated[int, Field(ge=0)] = 2
    # annealed: each rung a whole short run (cosine to zero at its end), a survivor starts
    # again on the budget; continued: the rung is the start of the budget's run, a survivor
    # carries on (cheaper by a rung, ranked before the rates anneal: it favours low rates)
    rungs: Literal["annealed", "continued"] = "annealed"


# ``finetune.<strategy>.budget``: the keys of the common budget this strategy sets otherwise
# (empty: none, the default). Every key optional; what is set is a reported deviation.
BudgetOverride = create_model(
    "BudgetOverride",
    __base__=_Strict,
    __doc__="Keys of finetune.budget that one strategy sets otherwise (a reported deviation).",
    **{k: (cast(Any, f.annotation) | None, None) for k, f in BudgetConfig.model_fields.items()},  # type: ignore[call-overload]
)


def _section_of(recipe: type[StrategyConfig]) -> type[_Strict]:
    """The params section of a strategy: its recipe's own keys (not the budget's, which live
    in finetune.budget) and an optional ``budget`` override. Validation of the whole recipe
    (budget + override + own keys) runs in :meth:`_FinetuneBase.strategy`."""
    own = {n: (f.annotation, f) for n, f in recipe.model_fields.items() if n not in BUDGET_KEYS}
    deviates = dict(getattr(recipe, "_default_deviations", {}))
    return create_model(  # type: ignore[call-overload]
        f"{recipe.__name__.removesuffix('Config')}Section",
        __base__=_Strict,
        __doc__=recipe.__doc__,
        budget=(BudgetOverride, Field(default_factory=lambda: BudgetOverride(**deviates))),
        **own,
    )


def strategy_params(name: str):
    """Class decorator: the params section ``finetune.<name>`` of registered strategy ``name``."""

    def attach(cls: type[_Strict]) -> type[_Strict]:
        registry.attach_params(name, cls)
        return cls

    return attach


@strategy_params("frozen")
class FrozenConfig(StrategyConfig):
    """Backbone frozen in eval mode: its rate and BatchNorm settings cannot matter."""

    _unused: ClassVar[frozenset[str]] = frozenset({"backbone_lr_mult", "bn", "bn_momentum"})
    # A deviation by default, reported as such: a linear head on freshly augmented images
    # settles slowly (on the default data still improving at 500 steps, converged at 1000),
    # and each of its steps is a forward pass of the frozen backbone (a third of full's).
    _default_deviations: ClassVar[dict[str, int]] = {"steps": 1000}
    lr: LrGrid = [3e-3, 1e-2, 3e-2]  # a head alone takes higher rates than a backbone


@strategy_params("partial")
class PartialConfig(StrategyConfig):
    # The last N parameter groups of the backbone (see Backbone.groups) train; the rest is frozen.
    unfreeze_blocks: Annotated[int, Field(ge=1)] = 3


@strategy_params("full")
class FullConfig(StrategyConfig):
    pass


@strategy_params("progressive")
class ProgressiveConfig(StrategyConfig):
    """Head first; at each fraction of the budget in ``unfreeze_at`` the next group from the
    top joins (at the first round of eval_every steps that starts there or after)."""

    unfreeze_at: list[Annotated[float, Field(gt=0, lt=1)]] = [0.2, 0.4, 0.6, 0.8]
    # Discriminative rates: each deeper group trains at lr_decay x the rate of the one above.
    lr_decay: Annotated[float, Field(gt=0, le=1)] = 0.5

    @model_validator(mode="after")
    def _schedule(self) -> ProgressiveConfig:
        e = self.unfreeze_at
        if not e:
            raise ValueError("unfreeze_at must list at least one fraction (else it is `frozen`)")
        if any(b <= a for a, b in zip(e, e[1:], strict=False)):
            raise ValueError("unfreeze_at must be strictly increasing")
        return self

    def unfreeze_steps(self) -> list[int]:
        """The steps at which each group joins, on this budget."""
        return [round(f * self.steps) for f in self.unfreeze_at]


@strategy_params("lp-ft")
class LpFtConfig(_Strict):
    """Linear probe, then fine-tune: exactly ``full``'s recipe (steps, warm-up, weight decay,
    backbone rate, BatchNorm) from train-head's probe instead of a random head. Only the
    learning-rate grid is its own, so the two differ in the head's start alone."""

    lr: LrGrid = [1e-3, 3e-3, 1e-2]
    # WiSE-FT: the weights mixed between the start (the probe on the pretrained backbone) and
    # the fine-tuned end at these alphas, each scored on val and test (evaluations only;
    # transferlab.training.wise). Empty: none.
    wise_alphas: list[Annotated[float, Field(ge=0, le=1)]] = [round(0.1 * i, 1) for i in range(11)]

    @model_validator(mode="after")
    def _alphas(self) -> LpFtConfig:
        a = self.wise_alphas
        if any(y <= x for x, y in zip(a, a[1:], strict=False)):
            raise ValueError("wise_alphas must be strictly increasing")
        return self


class _EfficientConfig(StrategyConfig):
    """Parameter-efficient strategies: opt-in (add them to finetune.strategies). The few
    backbone tensors they train learn at the head's rate (``backbone_lr_mult`` 1), as in
    their papers: they are new or tiny, not pretrained weights to be adjusted gently."""

    lr: LrGrid = [3e-3, 1e-2, 3e-2]
    backbone_lr_mult: Annotated[float, Field(gt=0, le=1)] = 1.0


@strategy_params("bitfit")
class BitfitConfig(_EfficientConfig):
    """BitFit (Zaken et al., 2022): every bias of the backbone trains, nothing else. In
    convolutional networks without convolution biases those are the normalisation shifts."""


@strategy_params("norm")
class NormConfig(_EfficientConfig):
    """Only the scales and shifts of every normalisation layer (BatchNorm, LayerNorm,
    GroupNorm) of the backbone train."""


@strategy_params("lora")
class LoraConfig(_EfficientConfig):
    """LoRA (Hu et al., 2021): low-rank updates on linear layers, 1x1 convolutions and
    attention projections (transferlab.training.lora); the pretrained weights stay frozen, and the
    checkpoint holds them merged."""

    rank: Annotated[int, Field(ge=1)] = 8
    alpha: Annotated[float, Field(gt=0)] = 16.0  # updates scaled by alpha / rank


@strategy_params("scratch")
class ScratchConfig(StrategyConfig):
    """The same architecture from random weights: what pretraining is worth."""

    backbone_lr_mult: Annotated[float, Field(gt=0, le=1)] = 1.0
    bn: Literal["frozen", "train"] = "train"

    @model_validator(mode="after")
    def _bn(self) -> ScratchConfig:
        if self.bn != "train":
            raise ValueError("bn must be 'train': random weights have no running statistics to keep")
        return self


def _finetune_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for spec in registry.all_models():
        if spec.two_stage:
            continue
        if spec.params is None:
            raise RuntimeError(
                f"strategy {spec.name!r} is registered without params (config.strategy_params)"
            )
        section = _section_of(spec.params) if issubclass(spec.params, StrategyConfig) else spec.params
        fields[spec.section] = (section, Field(default_factory=section, alias=spec.name))
    return fields


class _FinetuneBase(_Strict):
    """The end-to-end strategies, one section each (one per registered strategy, built from
    the registry below). A strategy whose ``lr`` grid is empty does not run."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # The head of every end-to-end model that does not start from the probe.
    head: HeadConfig = HeadConfig()
    # The budget every end-to-end strategy trains on (a strategy's own ``budget`` overrides).
    budget: BudgetConfig = BudgetConfig()
    # How each run searches its learning rate (the same rule for every strategy).
    search: SearchConfig = SearchConfig()

    # The end-to-end strategies that run (one stage each per seed): those that start from
    # the pretrained backbone and a fresh head (or random weights: scratch)...
    strategies: list[str] = ["frozen", "partial", "full"]
    # ... and those that start from train-head's probe (lp-ft), a stage block of their own
    # because they depend on the probe. [] runs none.
    from_probe: list[str] = ["lp-ft"]

    @model_validator(mode="after")
    def _listed(self) -> _FinetuneBase:
        known = registry.names("end-to-end")
        probe = [n for n in known if registry.get(n).from_probe]
        for key, allowed in (("strategies", [n for n in known if n not in probe]), ("from_probe", probe)):
            names = getattr(self, key)
            wrong = [n for n in names if n not in allowed]
            if wrong:
                raise ValueError(f"{key}: {wrong[0]!r} is not one of {', '.join(allowed)}")
            if len(set(names)) != len(names):
                raise ValueError(f"{key} lists a strategy twice")
            empty = [n for n in names if not self.section(n).lr]
            if empty:
                raise ValueError(
                    f"{key}: {empty[0]} runs but finetune.{empty[0]}.lr is empty; give it a grid"
                )
        return self

    @property
    def runs(self) -> list[str]:
        """Every end-to-end strategy the pipeline trains, in the registry's order."""
        listed = set(self.strategies) | set(self.from_probe)
        return [s for s in registry.names("end-to-end") if s in listed]

    def section(self, name: str) -> Any:
        """The params of ``finetune.<name>`` as written (lp-ft: only its grid)."""
        if name not in registry.names("end-to-end"):
            known = ", ".join(registry.names("end-to-end"))
            raise ConfigError(f"finetune: unknown strategy {name!r}; known: {known}")
        return getattr(self, registry.get(name).section)

    def strategy(self, name: str) -> StrategyConfig:
        """The training recipe of ``name``: the common budget, the strategy's deviations from
        it and its own keys, validated together (or for a strategy that trains with another's
        recipe, lp-ft: full's, that one's on its own grid)."""
        spec = registry.get(name) if name in registry.names("end-to-end") else None
        if spec is not None and spec.recipe_of is not None:
            return self.strategy(spec.recipe_of).model_copy(update={"lr": self.section(name).lr})
        section = self.section(name)
        assert spec is not None and spec.params is not None and issubclass(spec.params, StrategyConfig)
        data = {
            **self.budget.model_dump(),
            **self.deviations(name),
            **section.model_dump(exclude_unset=True, exclude={"budget"}),
        }
        try:
            return spec.params.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_format_error(f"finetune.{name}", err)) from None

    def deviations(self, name: str) -> dict[str, Any]:
        """The budget keys ``name`` trains on otherwise than finetune.budget says (lp-ft:
        full's, whose recipe it trains with)."""
        spec = registry.get(name)
        section = self.section(spec.recipe_of or name)
        return dict(section.budget.model_dump(exclude_none=True))


FinetuneConfig = create_model("FinetuneConfig", __base__=_FinetuneBase, **_finetune_fields())


class ShiftConfig(_Strict):
    """The robustness view: a shifted copy of the test split, made by the pipeline and scored
    by every model (transferlab.data.images.Shift). Empty ``kinds``: none."""

    kinds: list[Literal["blur", "noise", "contrast", "rotation"]] = []
    severity: Annotated[int, Field(ge=1, le=5)] = 3  # ImageNet-C's scale: 1 mild .. 5 strong

    @model_validator(mode="after")
    def _distinct(self) -> ShiftConfig:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError("kinds lists a shift twice")
        return self


class CurveConfig(_Strict):
    """Learning curves, the report's "If you had more (or less) data": the two-stage models
    (train_head.models), and the end-to-end strategies named in ``models``, trained again on
    nested, stratified fractions of each run's training split (transferlab.data.subsets),
    scored on the same validation and test images. The full split is the main run. Empty
    ``sizes``: no curves."""

    sizes: list[Annotated[float, Field(gt=0, lt=1)]] = [0.1, 0.25, 0.5]
    # end-to-end strategies with a curve too (opt-in: each point trains its lr grid)
    models: list[str] = []

    @model_validator(mode="after")
    def _check(self) -> CurveConfig:
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes lists a fraction twice: {self.sizes}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a strategy twice: {self.models}")
        for name in self.models:
            if name not in registry.names("end-to-end"):
                known = ", ".join(registry.names("end-to-end"))
                raise ValueError(
                    f"models: {name!r} is not an end-to-end strategy (known: {known}); "
                    "the two-stage models have their curve without being listed"
                )
            if registry.get(name).from_probe:
                raise ValueError(
                    f"models: {name} starts from the full-size linear probe, so its points would "
                    "not train on the subset alone; it has no curve"
                )
        if self.models and not self.sizes:
            raise ValueError(f"models lists {self.models}, but sizes is empty")
        return self


class VerdictConfig(_Strict):
    """How the recommendation is decided (docs/verdict.md, "Equivalence before cheapness")."""

    # A cheaper model is recommended in place of the best on validation only when the test
    # data show it at most this much accuracy below it (0.02: two points); a fraction of
    # accuracy, like every score the pipeline writes.
    margin: Annotated[float, Field(gt=0, lt=0.5)] = 0.02


class ExportConfig(_Strict):
    """What the export stage ships as models/recommended/."""

    # false: the recommended model's run best on its own validation split (as scored);
    # true: the recommended strategy trained again on every image of the data set at the
    # hyper-parameters and step count its runs chose on validation (no image left to score it)
    refit: bool = False


class ReportConfig(_Strict):
    title: str = "Transfer strategies compared"


SECTIONS: dict[str, type[_Strict]] = {
    "base": BaseConfig,
    "download": DownloadConfig,
    "backbone": BackboneConfig,
    "extract_features": ExtractConfig,
    "train_head": TrainHeadConfig,
    "augment": AugmentConfig,
    "finetune": FinetuneConfig,
    "shift": ShiftConfig,
    "curve": CurveConfig,
    "verdict": VerdictConfig,
    "export": ExportConfig,
    "report": ReportConfig,
}


def _format_error(section: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in (section, *first["loc"]))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",) and first["loc"]:
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    return f"{loc}: {msg}" + (f" [and {more} more problem(s)]" if more else "")


def parse_section(section: str, raw: Any) -> _Strict:
    """Validate one params section (a dict, or None for all defaults)."""
    if section not in SECTIONS:
        raise ConfigError(f"unknown params section {section!r}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: must be a mapping, got {type(raw).__name__}")
    try:
        parsed = SECTIONS[section].model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(section, err)) from None
    if isinstance(parsed, _FinetuneBase):  # budget + deviations + own keys, per strategy run
        for name in parsed.runs:
            parsed.strategy(name)
    return parsed


def _cross_check(parsed: dict[str, _Strict]) -> None:
    """Rules that span sections: checked by every stage, so the first one to run says it."""
    ft, th, curve = parsed["finetune"], parsed["train_head"], parsed["curve"]
    assert isinstance(ft, _FinetuneBase) and isinstance(th, TrainHeadConfig)
    assert isinstance(curve, CurveConfig)
    for name in curve.models:
        if name not in ft.runs:
            raise ConfigError(
                f"curve.models: {name} does not run (it is not in finetune.strategies or "
                "finetune.from_probe); list it there, or drop it from curve.models"
            )
    for name in ft.runs:
        if registry.get(name).from_probe and "features" not in th.models:
            raise ConfigError(
                f"finetune.{name}: starts from the linear probe, but train_head.models does not "
                f"list 'features'; add it, or drop {name} from finetune.from_probe"
            )


@dataclass(frozen=True)
class Params:
    """Every section of params.yaml, validated and typed."""

    base: BaseConfig
    download: DownloadConfig
    backbone: BackboneConfig
    extract_features: ExtractConfig
    train_head: TrainHeadConfig
    augment: AugmentConfig
    finetune: _FinetuneBase
    shift: ShiftConfig
    curve: CurveConfig
    verdict: VerdictConfig
    export: ExportConfig
    report: ReportConfig

    def sections(self) -> dict[str, _Strict]:
        """Every section by its name in params.yaml, in the file's order."""
        return {name: getattr(self, name) for name in SECTIONS}


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read ``path`` and validate every section in it.

    The whole file is validated whichever sections a stage uses: a mistake anywhere stops
    the first stage that runs, not the one that happens to read that key an hour later.
    Unknown top-level sections are an error too: they are almost always typos. Which
    sections a stage reads is checked against its params in dvc.yaml by
    tests/test_pipeline_deps.py.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section {unknown[0]!r}; known: {', '.join(SECTIONS)}")
    try:
        parsed = {s: parse_section(s, data.get(s)) for s in SECTIONS}
        _cross_check(parsed)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return Params(**parsed)  # type: ignore[arg-type]
