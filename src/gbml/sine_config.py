"""The sine-wave case study's section of params.yaml (``sine:``): its config dataclass.

Apart from ``gbml.sine``, which runs the study, so that the schema (``gbml.schema``) and params
validation read the section without importing torch. Where each default comes from: the
docstring of ``gbml.sine``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gbml.fields import check, choice, count, from_section, integer, non_negative, rate

SINE_ALGORITHMS = ("maml", "fomaml", "reptile", "pretrain")


@dataclass(frozen=True)
class SineStudyConfig:
    """Everything that determines the study (the ``sine:`` section of params.yaml)."""

    seed: int = integer(0)         # initialisation and meta-training task streams
    test_seed: int = integer(2018)  # the test tasks: fixed across training seeds
    algorithms: tuple[str, ...] = SINE_ALGORITHMS
    shots: int = count(10)         # K support points per task
    hidden: int = count(64)
    depth: int = count(2)
    activation: str = choice("tanh", "relu")
    maml_iters: int = count(4000)  # shared by MAML and FOMAML
    maml_meta_batch: int = count(25)
    maml_meta_lr: float = rate(1e-3)
    maml_inner_lr: float = rate(0.02)   # Finn et al.: 0.01; here = eval_lr, see gbml.sine's docstring
    maml_inner_steps: int = count(1)
    maml_queries: int = count(10)
    reptile_iters: int = count(30000)
    reptile_meta_batch: int = count(1)
    reptile_meta_step: float = non_negative(0.1)   # 0 keeps the initialisation as drawn (a control)
    reptile_meta_step_final: float = non_negative(0.0)
    reptile_inner_lr: float = rate(0.02)
    reptile_inner_batch: int = count(10)
    reptile_inner_iters: int = count(5)
    reptile_train_shots: int = count(50)
    test_tasks: int = count(200, minimum=2)   # at least 2 for a confidence interval
    eval_lr: float = rate(0.02)
    eval_steps: int = count(32, minimum=0)
    eval_query_points: int = count(50)
    figure_tasks: int = count(2, minimum=0)
    figure_steps: tuple[int, ...] = (0, 8, 16, 24, 32)
    threads: int = count(1, minimum=0)   # torch threads (0: torch's default); these networks are too small to gain from more

    def __post_init__(self):
        # YAML gives lists; keep the dataclass hashable and its JSON form stable.
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        object.__setattr__(self, "figure_steps", tuple(int(s) for s in self.figure_steps))
        unknown = set(self.algorithms) - set(SINE_ALGORITHMS)
        if unknown or not self.algorithms:
            raise ValueError(f"sine.algorithms must be a non-empty subset of {list(SINE_ALGORITHMS)}, "
                             f"got {list(self.algorithms)}")
        check(self)
        if self.figure_tasks > self.test_tasks:
            raise ValueError("sine.figure_tasks must be <= sine.test_tasks")
        if not self.figure_steps or any(not 0 <= s <= self.eval_steps for s in self.figure_steps):
            raise ValueError(f"sine.figure_steps must lie in [0, eval_steps={self.eval_steps}], "
                             f"got {list(self.figure_steps)}")

    @classmethod
    def from_dict(cls, values: dict) -> "SineStudyConfig":
        """Build from the ``sine`` section (``gbml.fields.from_section``: unknown keys refused)."""
        return from_section(cls, values, "sine")
