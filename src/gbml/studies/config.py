"""What determines each study (``studies.<name>`` in params.yaml): one frozen dataclass per
study, its fields declaring their bounds (``gbml.fields``) so params.yaml's schema enforces them.
Kept apart from the studies' code, which only the study stages run: every command validates
params.yaml, so this module is part of every stage, the studies' code is not."""

from __future__ import annotations

from dataclasses import dataclass

from gbml.errors import ConfigError
from gbml.fields import check, choice, count, from_section, integer, non_negative, rate, section_name

SECTION = "studies"


MAML_FAMILY = ("maml", "fomaml", "anil")   # adapted by MAML's inner loop over named parameters


@dataclass(frozen=True)
class FeatureReuseConfig:
    """The ``studies.feature_reuse`` section of params.yaml."""
    algorithms: tuple[str, ...] = ("maml", "anil")   # trained runs of the grid to analyse
    freeze_algorithms: tuple[str, ...] = ("maml",)   # freezing is moot for ANIL (its body never adapts)
    similarity_tasks: int = count(100)
    queries: int = count(15)        # per class: 5-way x 15 = 75 query examples per similarity
    freeze_tasks: int = count(400)
    freeze_queries: int = count(1)
    seed: int = integer(1234)       # the test tasks (evaluation's seed: the same tasks as evals/)
    modes: tuple[str, ...] = ("transductive", "non_transductive")

    def __post_init__(self):
        check(self)
        for name in ("algorithms", "freeze_algorithms", "modes"):   # YAML lists: keep it hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))
        outside = sorted(set(self.algorithms) - set(MAML_FAMILY))
        if outside or not self.algorithms:
            raise ValueError(f"algorithms must be a non-empty subset of {list(MAML_FAMILY)} (an inner loop over "
                             f"a layered network's parameters), got {list(self.algorithms)}")
        if not set(self.freeze_algorithms) <= set(self.algorithms):
            raise ValueError(f"freeze_algorithms {list(self.freeze_algorithms)} must be among algorithms")
        if not self.modes or not set(self.modes) <= {"transductive", "non_transductive"}:
            raise ValueError(f"modes must be transductive and/or non_transductive, got {list(self.modes)}")


# Nichol et al.'s arms (section 6.2, Figure 3): g1 alone is joint training, gk alone first-order
# MAML with k steps, g1 + ... + gk Reptile with k steps. "_" joins gradients (DVC stage names).
PAPER_ARMS = ("g1", "g2", "g1_g2", "g3", "g1_g2_g3", "g4", "g1_g2_g3_g4")


def distinct(cfg, name: str) -> None:
    """A list field whose repeats would measure a unit twice (and count it twice in the intervals)."""
    values = list(getattr(cfg, name))
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, got {values}")


@dataclass(frozen=True)
class ReptileReferenceStudy:
    """What the two studies of the Reptile reference's first-order inner loop share (Nichol et al.
    sections 6.2 and 6.3): tasks, plain-SGD inner steps, the linear meta-step schedule and the
    held-out scoring. ``LISTS`` names a subclass's list fields (YAML lists, kept as tuples, each
    without repeats)."""
    LISTS = ("seeds",)
    seeds: tuple[int, ...] = (0,)   # empty: the study is not run in this profile (the report says so)
    ways: int = count(5)
    shots: int = count(5)           # the held-out tasks' support examples per class
    inner_batch: int = count(25)    # examples of one inner minibatch
    inner_lr: float = rate(0.003)   # plain SGD (the reference's --sgd), in training and at test time
    inner_loss: str = choice("sum", "mean")   # "sum": the reference's TensorFlow loss vector
    meta_step: float = rate(0.25)
    meta_step_final: float = non_negative(0.0)
    meta_iters: int = count(1000)
    eval_every: int = count(1000)   # meta-iterations between held-out curve points
    eval_tasks: int = count(200)    # held-out (test split) tasks, the same for every unit
    eval_queries: int = count(1)    # per class, as the reference's evaluation
    eval_inner_batch: int = count(25)
    eval_inner_iters: int = count(5)
    eval_mode: str = choice("non_transductive", "transductive")
    eval_seed: int = integer(1234)

    def __post_init__(self):
        check(self)
        for name in self.LISTS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
            distinct(self, name)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"seeds must be integers, got {list(self.seeds)}")


@dataclass(frozen=True)
class GradientCombinationsConfig(ReptileReferenceStudy):
    """The ``studies.gradient_combinations`` section of params.yaml: the reference's commands
    (supervised-reptile README, "Comparing different inner-loop gradient combinations") except
    ``meta_iters`` (40,000) and the held-out tasks per curve point. An arm up to gk draws
    k x inner_batch / ways examples per class."""
    LISTS = ("arms", "seeds")
    arms: tuple[str, ...] = PAPER_ARMS
    meta_iters: int = count(40000)
    eval_tasks: int = count(100)

    def __post_init__(self):
        super().__post_init__()
        if self.inner_batch % self.ways:
            raise ValueError(f"inner_batch {self.inner_batch} must be a multiple of ways {self.ways} "
                             "(each arm's task holds k x inner_batch / ways examples per class)")
        if not self.arms:
            raise ValueError("arms must name at least one arm (g1, g1_g2, ...)")
        for arm in self.arms:
            arm_gradients(arm)

    def train_shots(self, arm: str) -> int:
        """Examples per class of an arm's training task: one disjoint minibatch per inner step."""
        return max(arm_gradients(arm)) * self.inner_batch // self.ways


VARIANTS = ("reptile", "foml_shared", "foml_separate")


@dataclass(frozen=True)
class MinibatchOverlapConfig(ReptileReferenceStudy):
    """The ``studies.minibatch_overlap`` section of params.yaml (Nichol et al. section 6.3, Figure
    4): first-order MAML whose last inner minibatch comes from the task's examples like the others
    (``foml_shared``: the reference's FOML, which may overlap them) or from ``tail_shots`` held-out
    examples per class (``foml_separate``: ``--foml-tail``), and Reptile beside them; inner
    minibatches by cycling through the task's examples or drawn with replacement; for each count of
    inner iterations. Training and scoring otherwise as ``gradient_combinations``."""
    LISTS = ("variants", "samplings", "inner_iters", "seeds")
    variants: tuple[str, ...] = VARIANTS
    samplings: tuple[str, ...] = ("cycle", "replacement")
    inner_iters: tuple[int, ...] = (2, 4, 6)
    train_shots: int = count(15)    # examples per class of a training task (the tail's included)
    tail_shots: int = count(5)      # foml_separate: examples per class of the last minibatch

    def __post_init__(self):
        super().__post_init__()
        if not self.variants or not set(self.variants) <= set(VARIANTS):
            raise ValueError(f"variants must be among {list(VARIANTS)}, got {list(self.variants)}")
        if not self.samplings or not set(self.samplings) <= {"cycle", "replacement"}:
            raise ValueError(f"samplings must be cycle and/or replacement, got {list(self.samplings)}")
        if not self.inner_iters or not all(isinstance(k, int) and k >= 2 for k in self.inner_iters):
            raise ValueError(f"inner_iters must be integers >= 2 (a last minibatch after at least one step), "
                             f"got {list(self.inner_iters)}")
        if self.tail_shots >= self.train_shots:
            raise ValueError(f"tail_shots {self.tail_shots} must leave examples for the earlier minibatches "
                             f"(train_shots {self.train_shots})")
        if self.inner_batch > self.ways * (self.train_shots - self.tail_shots):
            raise ValueError(f"inner_batch {self.inner_batch} exceeds the {self.ways * (self.train_shots - self.tail_shots)} "
                             "examples a separate-tail task keeps for its earlier minibatches")


@dataclass(frozen=True)
class TaylorTermsConfig:
    """The ``studies.taylor_terms`` section of params.yaml (Nichol et al. section 5.1): the
    k = 2 expansion measured at each seed's initialisation on ``tasks`` Omniglot training tasks,
    two disjoint minibatches of ``inner_batch`` each, for every inner rate in ``alphas`` (the
    gradient-combination study's 0.003 with the summed loss among them)."""
    seeds: tuple[int, ...] = (0, 1, 2)   # empty: the study is not run in this profile (the report says so)
    tasks: int = count(50)
    ways: int = count(5)
    inner_batch: int = count(25)
    inner_loss: str = choice("sum", "mean")
    alphas: tuple[float, ...] = (1e-11, 1e-10, 1e-7, 1e-4, 1e-3, 0.003)

    def __post_init__(self):
        check(self)
        for name in ("seeds", "alphas"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            distinct(self, name)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"seeds must be integers, got {list(self.seeds)}")
        if len(self.alphas) < 2 or not all(isinstance(a, (int, float)) and a > 0 for a in self.alphas):
            raise ValueError(f"alphas must be at least two positive rates (the errors' slope over alpha), "
                             f"got {list(self.alphas)}")
        if self.inner_batch % self.ways:
            raise ValueError(f"inner_batch {self.inner_batch} must be a multiple of ways {self.ways}")


@dataclass(frozen=True)
class MamlppAblationConfig:
    """The ``studies.mamlpp_ablation`` section of params.yaml (Antoniou et al. 2019, Figure 1 and
    Table 1's ablation rows): each arm a params section (an algorithm or a ``variant_of`` one),
    trained from every seed on ``dataset`` ``ways``-way ``shots``-shot and scored on ``eval_tasks``
    test tasks (transductive, MAML++'s protocol). ``baseline`` (MAML: every switch off) against
    ``fixed`` (MAML++: every switch on) is the instability comparison; every arm against
    ``baseline`` is the ablation."""
    arms: tuple[str, ...] = ("maml_strided", "maml_msl", "maml_lslr", "maml_bnwb_bnrs", "mamlpp_strided")
    baseline: str = section_name("maml_strided")
    fixed: str = section_name("mamlpp_strided")
    seeds: tuple[int, ...] = (0, 1, 2)   # empty: the study is not run in this profile (the report says so)
    dataset: str = choice("omniglot", "miniimagenet")
    ways: int = count(20)
    shots: int = count(1)
    log_every: int = count(10)      # iterations per training-loss point: spikes need a fine curve
    eval_tasks: int = count(600)
    eval_seed: int = integer(1234)
    # A training-loss point this far (nats) above the curve's running minimum marks a run unstable.
    rise: float = rate(0.5)

    def __post_init__(self):
        check(self)
        for name in ("arms", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            distinct(self, name)
        if not self.arms or not {self.baseline, self.fixed} <= set(self.arms):
            raise ValueError(f"arms {list(self.arms)} must include the baseline {self.baseline!r} and the "
                             f"fixed arm {self.fixed!r}")
        if not all(isinstance(a, str) and a.replace("_", "").isalnum() for a in self.arms):
            raise ValueError(f"arms must be params section names (letters, digits, '_'), got {list(self.arms)}")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ValueError(f"seeds must be integers, got {list(self.seeds)}")


def arm_gradients(name: str) -> list[int]:
    """``"g1_g3"`` -> [1, 3]: the inner gradients an arm's update sums (1-based, each once)."""
    parts = name.split("_")
    if not all(p.startswith("g") and p[1:].isdigit() and int(p[1:]) >= 1 for p in parts):
        raise ValueError(f"arm {name!r}: expected gradients g1, g2, ... joined by '_', e.g. 'g1_g2'")
    indices = [int(p[1:]) for p in parts]
    if indices != sorted(set(indices)):   # one name per arm: the report pairs arms by name
        raise ValueError(f"arm {name!r}: name each gradient once, in ascending order (e.g. 'g1_g3')")
    return indices


CONFIGS = {"feature_reuse": FeatureReuseConfig, "gradient_combinations": GradientCombinationsConfig,
           "minibatch_overlap": MinibatchOverlapConfig, "taylor_terms": TaylorTermsConfig,
           "mamlpp_ablation": MamlppAblationConfig}


def study_config(params: dict, name: str):
    """The study's config from ``studies.<name>`` in params.yaml (absent: the defaults), refusing
    keys that are not fields (a typo would otherwise leave a default in place)."""
    if name not in CONFIGS:
        raise ConfigError(f"no study {name!r}; the studies are {', '.join(CONFIGS)}")
    return from_section(CONFIGS[name], dict((params.get(SECTION) or {}).get(name) or {}), f"{SECTION}.{name}")
