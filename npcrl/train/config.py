"""Trainer configuration: one dataclass per component, loaded from TOML with unknown keys rejected.

A config file has the sections ``[data]``, ``[model]``, ``[ppo]``, ``[run]`` and ``[reward_model]`` plus a
top-level ``seed``; every key is optional. Defaults say where they come from: TRL's PPO (``trl.experimental.ppo``,
which follows Ziegler et al. 2019 and InstructGPT for small LMs), BPPO for the offline setting, and measurements
on SmolLM2-135M on a 2-core CPU (docs/BENCHMARKS.md). Pure Python: importable without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npcrl.errors import TrainConfigError
from npcrl.tomlfile import read_toml
from npcrl.train.config_contradiction import ContradictionConfig
from npcrl.train.config_data import DataConfig
from npcrl.train.config_ranges import check as _check
from npcrl.train.config_ranges import check_fields as _check_fields
from npcrl.train.config_ranges import check_path as _check_path
from npcrl.train.config_toml import section_from_toml, typed

REWARD_MODEL_BACKBONES = ("lora", "frozen", "full")
REWARD_MODEL_POOLINGS = ("last", "mean")
REWARD_MODEL_HEAD_FITS = ("adamw", "ridge")


PRECISIONS = ("fp32", "bf16", "auto")
MINIBATCH_ORDERS = ("shuffled", "by_prefix")


@dataclass
class ModelConfig:
    """Policy, value head and reference."""

    mode: str = "lora"
    """'lora' (reference = adapter disabled) or 'full' (reference = a frozen copy). LoRA is the default:
    faster per step and 1.2 GB less memory on SmolLM2-135M (docs/BENCHMARKS.md)"""
    lora_r: int = 16
    """LoRA rank (16 on the attention projections q/k/v/o)"""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (alpha / r = 2, peft's common setting)"""
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """module names LoRA adapts; GPT-2 models use ['c_attn', 'c_proj']"""
    value_head_std: float = 0.0
    """init std of the scalar value head's weight (0 = zeros: values start at 0, as in cleanrl's critic bias)"""
    precision: str = "auto"
    """'fp32', 'bf16' or 'auto' (the default). bf16: the transformer body of the policy and the reference runs under
    torch's CPU autocast in bfloat16 (forward and backward); the output layer, value head, log-probs,
    KL, losses, LoRA weights and optimizer state stay float32. On a CPU with AVX512-BF16 the trainer's
    passes ran 1.4-1.5x faster and a whole run 1.33x; on one without bfloat16 units (AVX2) its matrix
    products ran ~90x slower than fp32. auto: bf16 where the CPU has those units, else fp32
    (``npcrl.train.cpu_precision``); docs/TRAINING.md has the measurements"""
    pad_shapes: bool = True
    """pad every pass to a few tensor shapes, so CPU kernels are built once, not per micro-batch; exact up to
    rounding (``npcrl.train.shapes``); 1.15x faster by measurement (docs/TRAINING.md, "Padding to a few shapes")"""

    def validate(self) -> None:
        _check_fields(self, "model.")
        _check(self.mode in ("lora", "full"), "model.mode", self.mode, "'lora' or 'full'")
        _check(self.precision in PRECISIONS, "model.precision", self.precision, "'fp32', 'bf16' or 'auto'")
        _check(
            bool(self.lora_target_modules) and all(isinstance(m, str) and m for m in self.lora_target_modules),
            "model.lora_target_modules",
            self.lora_target_modules,
            "a non-empty list of module names",
        )


@dataclass
class PPOConfig:
    """The PPO update (docs/TRAINING.md, "One iteration", has the math)."""

    rollout_turns: int = 16
    """turns scored per iteration (pi_old, reference and values computed once for them)"""
    minibatch_turns: int = 8
    """turns per optimizer step"""
    micro_batch_turns: int = 4
    """turns per forward/backward; gradients accumulate over minibatch_turns / micro_batch_turns"""
    minibatch_order: str = "by_prefix"
    """how each epoch cuts the rollout into minibatches: 'shuffled' (a seeded permutation) or
    'by_prefix' (the same permutation with rows sharing a prompt prefix, i.e. one persona, kept
    together, so a micro-batch runs its persona prefix once for more rows: less compute per epoch,
    but each optimizer step sees fewer personas; with one epoch at twice the step size it halved
    the update at a gain not told apart from two shuffled epochs', docs/RESULTS.md)"""
    epochs: int = 1
    """passes over each rollout batch (BPPO: keep them few offline; TRL uses 4 on fresh samples)"""
    passes: float = 4.0
    """passes over the training turns; iterations = ceil(passes * train turns / rollout_turns). With
    ``kl_stop`` set (the default) this is the most the run may take, not what it takes"""
    iterations: int = 0
    """if > 0, overrides passes"""
    max_iterations_per_pass: int = 64
    """if > 0, one pass over the training turns takes at most this many iterations: rollout_turns
    and minibatch_turns are multiplied by the smallest whole k that makes it so
    (``scaled_to_logs``; micro_batch_turns, and so memory, is unchanged). A pass is then about
    the same number of optimizer steps at any log size, each on k times the turns, so a
    ``kl_stop`` reached after a similar number of steps still reads most of large logs. 0: the
    sizes are used as given."""
    learning_rate: float = 1e-4
    """AdamW step size (1e-4 for LoRA at one epoch; use ~1e-5 for full fine-tuning, TRL's PPO default
    is 3e-6 on larger models)"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping by global norm"""
    gamma: float = 1.0
    """discount over the tokens of a turn (TRL/InstructGPT: 1)"""
    lam: float = 0.95
    """GAE lambda (TRL: 0.95)"""
    clip_eps: float = 0.2
    """policy ratio clip (TRL: 0.2)"""
    value_clip_eps: float = 0.2
    """value clip around the rollout's values (TRL: 0.2)"""
    value_coef: float = 0.1
    """value loss weight (TRL: 0.1)"""
    entropy_coef: float = 0.0
    """entropy bonus weight (TRL: none; > 0 resists collapse into one phrase)"""
    kl_coef: float = 0.05
    """initial beta of the per-token KL penalty to the reference (TRL: 0.05)"""
    kl_target: float | None = None
    """if set, beta adapts toward this KL per turn in nats (Ziegler et al.: adaptive controller)"""
    kl_horizon: int = 10000
    """adaptive controller horizon in turns (Ziegler et al.: 10000)"""
    is_cap: float = 2.0
    """truncation C of the importance weight pi_old/mu (2-5: lower discards most of the off-policy
    correction, higher lets a few unlikely logged tokens dominate the gradient)"""
    reward_clip: float | None = 10.0
    """turn rewards are clipped to [-reward_clip, reward_clip] (None = off)"""
    whiten_advantages: bool = True
    """normalise advantages over the rollout batch"""
    standardize_rewards: bool = False
    """shift and scale the (clipped) turn rewards to mean 0, sd 1 over each rollout before the KL
    penalty is added (a reward model's small spread then weighs against kl_coef on a unit scale)"""
    kl_budget: float | None = 0.05
    """stop an iteration's epochs early when approx-KL to pi_old exceeds this (None = never)"""
    kl_stop: float | None = 1.5
    """stop the run once the policy's KL to the reference, in nats per turn averaged over the last
    ``kl_stop_window`` iterations, reaches this; ``passes``/``iterations`` is then the most it may
    run. The policy then moves about as far whatever a population leaves in the logs (a
    population that leaves after two lines gives a third of the turns: at one pass it hardly
    moves). 1.5 resolved and promoted all four shipped populations where one pass resolved two
    (docs/RESULTS.md). None ("none" in TOML): run the passes."""
    kl_stop_window: int = 5
    """iterations whose KL per turn ``kl_stop`` averages (one rollout's is noisy)"""

    def batch_scale(self, train_turns: int) -> int:
        """The k by which ``max_iterations_per_pass`` multiplies the rollout and minibatch for
        ``train_turns`` training turns (1 when it is off or the logs are small enough)."""
        if self.max_iterations_per_pass <= 0:
            return 1
        return max(1, math.ceil(train_turns / (self.rollout_turns * self.max_iterations_per_pass)))

    def scaled_to_logs(self, train_turns: int) -> PPOConfig:
        """These settings with the rollout and minibatch sizes ``batch_scale`` gives, which the
        trainer runs with (the run's recorded config keeps the sizes as given)."""
        k = self.batch_scale(train_turns)
        return dataclasses.replace(self, rollout_turns=k * self.rollout_turns, minibatch_turns=k * self.minibatch_turns)

    def validate(self) -> None:
        _check_fields(self, "ppo.")
        orders = " or ".join(repr(order) for order in MINIBATCH_ORDERS)
        _check(self.minibatch_order in MINIBATCH_ORDERS, "ppo.minibatch_order", self.minibatch_order, orders)
        _check(
            self.minibatch_turns <= self.rollout_turns,
            "ppo.minibatch_turns",
            self.minibatch_turns,
            f"<= ppo.rollout_turns ({self.rollout_turns})",
        )
        _check(
            self.minibatch_turns % self.micro_batch_turns == 0,
            "ppo.micro_batch_turns",
            self.micro_batch_turns,
            f"a divisor of ppo.minibatch_turns ({self.minibatch_turns})",
        )


@dataclass
class RunConfig:
    """Checkpoints, outputs and reporting."""

    checkpoint_every: int = 1
    """iterations between resumable checkpoints"""
    keep_checkpoints: int = 2
    """how many of the latest checkpoints to keep"""
    export_quant: str = "q8"
    """quantisation of the exported bundle: fp32, q8, q4, or 'none' to write only the HF checkpoint"""
    export_graph: str = "auto"
    """graph route of the export (auto, fused, torch)"""
    sample_prompts: int = 4
    """holdout prompts answered before and after training in the report"""
    sample_tokens: int = 48
    """max new tokens of each report sample"""
    ope_log_weight_clip: float = 5.0
    """per-turn log importance weights are clipped to +-this in the off-policy estimate"""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)"""

    def validate(self) -> None:
        _check_fields(self, "run.")
        quants = ("fp32", "q8", "q8-fast", "q4", "none")
        _check(self.export_quant in quants, "run.export_quant", self.export_quant, f"one of {', '.join(quants)}")
        graphs = ("auto", "fused", "torch")
        _check(self.export_graph in graphs, "run.export_graph", self.export_graph, f"one of {', '.join(graphs)}")


@dataclass
class RewardModelConfig:
    """The engagement predictor (``npcrl reward-model train``) and its use by on-policy PPO."""

    path: str | None = None
    """a trained reward model directory (``npcrl reward-model train --out``); needed when data.mode = 'reward_model'"""
    backbone: str = "lora"
    """'lora' (adapters from [model]'s LoRA keys + head), 'frozen' (head only) or 'full' (every weight trains).
    LoRA, as for the policy: an AdamW head on a frozen backbone's last token learned nothing of the tests' toy
    signal (held-out Pearson 0.00 against 1.00 with LoRA), and full training costs the memory and time LoRA
    saves. For a few hundred turns, 'frozen' + pooling 'mean' + head_fit 'ridge' fits 577 weights instead of
    1.8M and does not overfit (docs/TRAINING.md)"""
    epochs: int = 3
    """passes over the training turns"""
    batch_turns: int = 8
    """turns per optimizer step"""
    micro_batch_turns: int = 2
    """turns per forward/backward; gradients accumulate over batch_turns / micro_batch_turns. Real
    game turns are ~700 tokens: a backward over 8 of them at once held 18 GB on the real model"""
    learning_rate: float = 1e-4
    """AdamW step size (LoRA and head; use ~1e-5 for 'full', ~1e-3 for 'frozen')"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping by global norm"""
    engaged_threshold: float = 0.0
    """a turn counts as engaged when its reward is above this; the accuracy metric compares
    (prediction > threshold) with (reward > threshold)"""
    max_new_tokens: int = 0
    """on-policy sample length cap (0 = each logged turn's sampler max_new_tokens)"""
    pooling: str = "last"
    """what the head reads: 'last' (the response's last token's hidden state, which has attended to the whole
    line) or 'mean' (the mean of the response tokens' hidden states: a bag of what the line says, which suits
    rewards driven by words anywhere in the line)"""
    head_fit: str = "adamw"
    """'adamw' (gradient steps on head and trainable backbone, ``epochs`` passes) or 'ridge' (backbone 'frozen'
    only: one forward pass, then the head in closed form, its penalty chosen by cross-validation over the
    training conversations; the data-efficient choice for a few hundred turns)"""
    ridge_folds: int = 5
    """conversation folds of the ridge penalty's cross-validation"""
    retrain_each_round: bool = False
    """``npcrl loop`` only: train a reward model with these settings on each round's own logs (saved in the
    round's ``reward-model`` folder) and let it score that round's on-policy samples, so the predictor
    follows the policy it judges; ``path`` is then not read. ``npcrl train`` needs ``path``"""
    repetition_penalty: float = 0.0
    """on-policy only: each fresh line's reward is the reward model's score minus this times the share of
    the line's word 3-grams that the NPC already said earlier in the conversation (the evaluation's
    repetition measure, as a fraction). The frozen probe rates lines that repeat only ~0.04 lower where the
    simulated players gave ~0.09 lower, and PPO pushed past 2 nats of KL found that gap (docs/RESULTS.md);
    0 turns it off"""
    pool_rounds: bool = True
    """with ``retrain_each_round``: round K's reward model learns from the logs of rounds 1..K pooled, not
    round K's alone (the predictor is data-limited: held-out r 0.17 on one round's 334 turns, 0.30 on 983
    pooled); its holdout, like the trainer's, is a stable hash split of all pooled conversations"""

    def validate(self) -> None:
        _check_fields(self, "reward_model.")
        _check_path("reward_model.path", self.path)
        backbone = self.backbone
        _check(backbone in REWARD_MODEL_BACKBONES, "reward_model.backbone", backbone, "'lora', 'frozen' or 'full'")
        _check(
            self.batch_turns % self.micro_batch_turns == 0,
            "reward_model.micro_batch_turns",
            self.micro_batch_turns,
            f"a divisor of reward_model.batch_turns ({self.batch_turns})",
        )
        _check(self.pooling in REWARD_MODEL_POOLINGS, "reward_model.pooling", self.pooling, "'last' or 'mean'")
        _check(self.head_fit in REWARD_MODEL_HEAD_FITS, "reward_model.head_fit", self.head_fit, "'adamw' or 'ridge'")
        _check(
            self.head_fit != "ridge" or self.backbone == "frozen",
            "reward_model.head_fit",
            self.head_fit,
            f"'adamw' with backbone {self.backbone!r} (a closed-form head needs fixed features: backbone 'frozen')",
        )


RECORDED_BEFORE_THEIR_SECTION: dict[str, dict[str, Any]] = {"contradiction": {"penalty": "fixed"}}
"""what a run recorded before a section existed trained with, where that is not the section's default
now: the rejected samples' penalty was fixed until the adaptive one became the default"""

SECTION_CLASSES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "ppo": PPOConfig,
    "run": RunConfig,
    "reward_model": RewardModelConfig,
    "contradiction": ContradictionConfig,
}
"""the config file's sections and the dataclass of each"""


@dataclass
class TrainConfig:
    seed: int = 0
    """seeds data order, minibatch order, value-head init and report samples"""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    run: RunConfig = field(default_factory=RunConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    contradiction: ContradictionConfig = field(default_factory=ContradictionConfig)

    def validate(self) -> TrainConfig:
        _check_fields(self, "")
        for section in (self.data, self.model, self.ppo, self.run, self.reward_model, self.contradiction):
            section.validate()
        _check(
            self.data.mode != "reward_model"
            or self.reward_model.path is not None
            or self.reward_model.retrain_each_round,
            "reward_model.path",
            self.reward_model.path,
            "set when data.mode = 'reward_model' (a directory written by npcrl reward-model train)",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, recorded: dict[str, Any], where: str = "config") -> TrainConfig:
        """The config a run recorded (``to_dict`` output) read back: a section it lacks, since it was
        added later, takes the settings in effect before it existed (``RECORDED_BEFORE_THEIR_SECTION``),
        other keys added later their defaults."""
        missing = {name: values for name, values in RECORDED_BEFORE_THEIR_SECTION.items() if name not in recorded}
        return cls.from_dict({**missing, **recorded}, where)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        """Build from a (TOML-shaped) mapping; unknown sections/keys and wrongly typed values are errors."""
        sections = SECTION_CLASSES
        unknown = sorted(set(data) - set(sections) - {"seed"})
        if unknown:
            raise TrainConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: seed, {', '.join(sections)})")
        kwargs: dict[str, Any] = {}
        if "seed" in data:
            kwargs["seed"] = typed(data["seed"], int, f"{where}: seed")
        for name, section_cls in sections.items():
            if name not in data:
                continue
            values = data[name]
            if not isinstance(values, dict):
                raise TrainConfigError(f"{where}: [{name}] must be a table, got {type(values).__name__}")
            kwargs[name] = section_from_toml(section_cls, values, f"{where}: {name}")
        try:
            return cls(**kwargs).validate()
        except TrainConfigError as exc:
            raise TrainConfigError(f"{where}: {exc}") from None


def load_train_config(path: str | Path | None) -> TrainConfig:
    """The config in ``path`` (TOML), or the defaults when ``path`` is None."""
    if path is None:
        return TrainConfig().validate()
    data = read_toml(Path(path), TrainConfigError, "training config")
    return TrainConfig.from_dict(data, where=str(path))
