"""Policy, value head and frozen reference built from a bundle's HF weights.

Two modes (``ModelConfig.mode``):
* ``lora``: peft LoRA adapters on the attention projections; the reference is the same network
  with the adapter disabled, so it costs no extra memory and cannot drift.
* ``full``: every weight trains; the reference is a frozen deep copy.

The value head is a scalar linear layer on the backbone's last hidden state (shared backbone, as
TRL's value-head models): about half the training time of TRL's separate value network here.
"""

from __future__ import annotations

import copy
import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npcrl.errors import TrainConfigError, TrainError
from npcrl.runtime.bundle import Bundle
from npcrl.runtime.sampler import SamplerConfig
from npcrl.train.batching import Batch
from npcrl.train.config import ModelConfig
from npcrl.train.cpu_precision import resolve_precision
from npcrl.train.phase_timer import PhaseTimer
from npcrl.train.ppo_math import entropy_from_logits, selective_log_softmax
from npcrl.train.prefix_cache import PrefixCache
from npcrl.train.shapes import max_positions, pad_sequences, pad_steps
from npcrl.train.shared_prefix import decoder_hidden

VALUE_HEAD_FILE = "value_head.safetensors"


def resolve_base_weights(bundle: Bundle, override: str | Path | None) -> Path:
    """The HF directory (safetensors) holding the bundle's fp32 weights.

    ``override`` wins; otherwise the manifest's ``model.source`` when it is a local directory
    (bundles exported by ``npcrl model fetch``/``export`` and by the trainer record it; the
    trainer's is relative to the bundle, "../checkpoint", so a moved run still finds it).
    """
    if override is not None:
        path = Path(override).expanduser()
    else:
        source = bundle.manifest.model.get("source")
        path = bundle.root / Path(str(source)).expanduser() if source else bundle.root  # absolute stays absolute
        if not source or not path.is_dir():
            raise TrainError(
                f"{bundle.root}: the manifest's model.source ({source!r}) is not a local HF directory; "
                "pass the bundle's HF weights with --base-model DIR"
            )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise TrainError(f"{path}: not a Hugging Face model directory (config.json is missing)")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    layout = bundle.manifest.kv_cache
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    if layers != layout.num_layers:
        raise TrainError(
            f"{path}/config.json: {layers} layers, but bundle {bundle.root} has {layout.num_layers}; "
            "these are not the bundle's weights"
        )
    if int(config.get("vocab_size", -1)) < bundle.manifest.vocab_size:
        raise TrainError(
            f"{path}/config.json: vocab_size {config.get('vocab_size')} is smaller than the bundle's "
            f"{bundle.manifest.vocab_size}; these are not the bundle's weights"
        )
    return path


def _causal_lm(lm: nn.Module) -> Any:
    """The transformers model under a peft wrapper (or ``lm`` itself)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # type: ignore[operator]


def decoder_of(lm: nn.Module) -> nn.Module:
    """The transformer body (LlamaModel, GPT2Model, ...) under a causal LM or a peft wrapper."""
    base = _causal_lm(lm)
    return getattr(base, base.base_model_prefix)


def lm_head_of(lm: nn.Module) -> nn.Module:
    """The output projection (hidden states -> logits) under a causal LM or a peft wrapper."""
    return _causal_lm(lm).get_output_embeddings()


def body_precision(precision: str) -> AbstractContextManager[Any]:
    """Where the transformer body runs: as it is (fp32), or under CPU autocast in bfloat16."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def response_hidden(
    lm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    prefixes: PrefixCache | None = None,
    precision: str = "fp32",
    pad_shapes: bool = False,
) -> torch.Tensor:
    """Last hidden states at the positions that predict each response token: (B, T, H), float32.

    Rows sharing a prompt prefix run it once (``shared_prefix.decoder_hidden``: exact, ~3x less work
    on persona prompts); ``prefixes`` keeps those prefixes across calls (frozen weights only). With
    ``precision`` "bf16" the body runs in bfloat16; the hidden states come back as float32, so the
    output layer after it keeps float32 logits (bfloat16 logits of ~20 are 0.125 apart).
    ``pad_shapes``: the body sees padded widths and whole prefix blocks (``shapes.py``)."""
    # Step 0 is real in every row (a turn has a response token); padded steps hold position 0.
    first = int(positions[:, 0].min())
    decoder = decoder_of(lm)
    if pad_shapes:
        input_ids, attention_mask = pad_sequences(input_ids, attention_mask, max_positions(decoder.config))
    with body_precision(precision):
        hidden, offset = decoder_hidden(
            decoder, input_ids, attention_mask, limit=first, prefixes=prefixes, blocks=pad_shapes
        )  # after the final norm
    index = (positions - offset).clamp_min(0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, T, H)
    return hidden.gather(1, index).float()


def per_step(layer: nn.Module, hidden: torch.Tensor, pad_shapes: bool = False) -> torch.Tensor:
    """``layer`` applied to (B, T, H) states; ``pad_shapes``: on T padded to a whole number of
    ``shapes.STEP_MULTIPLE`` steps, cut back to T after."""
    if not pad_shapes:
        return layer(hidden)
    return layer(pad_steps(hidden))[:, : hidden.shape[1]]


def response_logits(
    lm: nn.Module, hidden: torch.Tensor, temperature: torch.Tensor, pad_shapes: bool = False
) -> torch.Tensor:
    """Temperature-scaled logits (B, T, V): the policy is the sampler's temperature-T softmax."""
    logits = per_step(lm_head_of(lm), hidden, pad_shapes).float()
    return logits / temperature.view(-1, 1, 1)


class PolicyWithValue(nn.Module):
    """The trained module (what DDP wraps): returns per-token log-probs, values and entropy."""

    def __init__(self, lm: nn.Module, value_head: nn.Linear, precision: str = "fp32", pad_shapes: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = value_head
        self.precision = precision
        """the transformer body's precision, 'fp32' or 'bf16' (``ModelConfig.precision`` as this CPU
        resolves 'auto'), for every pass of the run"""
        self.pad_shapes = pad_shapes
        """every pass pads its shapes (``ModelConfig.pad_shapes``, ``shapes.py``)"""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        response_ids: torch.Tensor,
        temperature: torch.Tensor,
        entropy_grad: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``entropy_grad`` False: the entropy is a monitor only (no bonus in the loss), and its
        backward through the (B, T, V) softmax is skipped."""
        pad = self.pad_shapes
        hidden = response_hidden(
            self.lm, input_ids, attention_mask, positions, precision=self.precision, pad_shapes=pad
        )
        logits = response_logits(self.lm, hidden, temperature, pad)  # (B, T, V)
        logprobs = selective_log_softmax(logits, response_ids)  # (B, T)
        with nullcontext() if entropy_grad else torch.no_grad():
            entropy = entropy_from_logits(logits)  # (B, T)
        values = per_step(self.value_head, hidden, pad).squeeze(-1)  # (B, T)
        return logprobs, values, entropy


def batch_inputs(batch: Batch) -> tuple[torch.Tensor, ...]:
    return batch.input_ids, batch.attention_mask, batch.positions, batch.response_ids, batch.temperature


@dataclass
class Policy:
    module: PolicyWithValue
    mode: str
    tokenizer: Any
    source: Path
    reference_lm: nn.Module | None = None  # full mode only
    reference_prefixes: PrefixCache = field(default_factory=PrefixCache)
    """the reference's persona prefixes, computed once per run (the reference never changes)"""

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def reference_context(self) -> AbstractContextManager[Any]:
        """Inside it, ``self.module.lm`` is the reference network (LoRA: adapter disabled)."""
        if self.mode == "lora":
            return self.module.lm.disable_adapter()  # type: ignore[operator]
        return nullcontext()

    def reference_lm_module(self) -> nn.Module:
        return self.module.lm if self.mode == "lora" else self.reference_lm  # type: ignore[return-value]

    @torch.no_grad()
    def score(
        self,
        batch: Batch,
        reference_is_policy: bool,
        timer: PhaseTimer | None = None,
        reference_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """pi_old and reference log-probs of the logged tokens, values, the exact per-state
        KL(pi_old(.|s_t) || pi_ref(.|s_t)) over the whole vocabulary, each (B, T), and the
        reference's hidden states at the response positions (B, T, H), which the reference's
        output layer reads.

        The exact KL matters offline: the logged tokens were drawn from mu, not pi_old, so the
        usual one-sample estimate log pi_old(a_t) - log pi_ref(a_t) is biased and goes negative as
        soon as the policy moves away from the logged lines. ``timer`` records the reference pass
        as its own phase. ``reference_hidden``: those states as an earlier pass computed them
        (``npcrl.train.reference_cache``): the reference's body is then not run again.
        """
        precision, pad = self.module.precision, self.module.pad_shapes
        hidden = response_hidden(
            self.module.lm, batch.input_ids, batch.attention_mask, batch.positions, precision=precision, pad_shapes=pad
        )
        logp = torch.log_softmax(response_logits(self.module.lm, hidden, batch.temperature, pad), dim=-1)  # (B, T, V)
        old = logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
        values = per_step(self.module.value_head, hidden, pad).squeeze(-1)
        if reference_is_policy:
            return old, old.clone(), values, torch.zeros_like(old), hidden
        with timer.phase("reference") if timer is not None else nullcontext(), self.reference_context():
            lm = self.reference_lm_module()
            if reference_hidden is None:
                reference_hidden = response_hidden(
                    lm, batch.input_ids, batch.attention_mask, batch.positions, self.reference_prefixes, precision, pad
                )
            ref_logp = torch.log_softmax(response_logits(lm, reference_hidden, batch.temperature, pad), dim=-1)
            ref = ref_logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
        kl = (logp.exp() * (logp - ref_logp)).sum(-1).clamp_min(0.0)  # clamp: float rounding only
        return old, ref, values, kl, reference_hidden

    @torch.no_grad()
    def full_logits(self, batch: Batch, reference: bool = False) -> torch.Tensor:
        """(B, T, V) raw (temperature 1) logits at the response positions, of the policy or the reference."""
        ctx = self.reference_context() if reference else nullcontext()
        with ctx:
            lm = self.reference_lm_module() if reference else self.module.lm
            prefixes = self.reference_prefixes if reference else None
            pad = self.module.pad_shapes
            hidden = response_hidden(
                lm, batch.input_ids, batch.attention_mask, batch.positions, prefixes, self.module.precision, pad
            )
            return response_logits(lm, hidden, torch.ones_like(batch.temperature), pad)

    @torch.no_grad()
    def generate(
        self, prompt_ids: list[int], sampler: SamplerConfig, max_new_tokens: int, seed: int, reference: bool = False
    ) -> list[int]:
        """Sample a response with HF generate (report samples; the game uses the ONNX runtime)."""
        ctx = self.reference_context() if reference else nullcontext()
        lm = self.reference_lm_module() if reference else self.module.lm
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if sampler.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=sampler.temperature, top_p=sampler.top_p)
            kwargs["top_k"] = sampler.top_k if sampler.top_k > 0 else None
            if sampler.repetition_penalty != 1.0:
                kwargs["repetition_penalty"] = sampler.repetition_penalty
        torch.manual_seed(seed)
        with ctx:
            out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)  # type: ignore[operator]
        return [int(t) for t in out[0, len(prompt_ids) :]]

    def merged_lm(self) -> nn.Module:
        """The trained causal LM as a plain transformers model (LoRA merged into the weights)."""
        lm = self.module.lm
        if self.mode == "lora":
            self.reference_prefixes.clear()  # merging changes the weights the reference ran with
            return lm.merge_and_unload()  # type: ignore[operator]
        return lm


def _target_modules_present(model: nn.Module, targets: list[str]) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [t for t in targets if t not in names]


def apply_lora(model: nn.Module, config: ModelConfig, family: str, seed: int) -> nn.Module:
    """``model`` wrapped with peft LoRA adapters on ``config.lora_target_modules`` (base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    missing = _target_modules_present(model, config.lora_target_modules)
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in ("Linear", "Conv1D")}
        )
        raise TrainConfigError(
            f"model.lora_target_modules: {', '.join(missing)} not found in {type(model).__name__} "
            f"(its linear layers: {', '.join(linear)})"
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft annotates int, uses it as a number
        target_modules=list(config.lora_target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=family == "gpt2",  # GPT-2 stores its projections as Conv1D (in, out)
    )
    torch.manual_seed(seed)  # LoRA's A matrices are random (B starts at zero: the wrapped model == model)
    return get_peft_model(model, lora)


def load_backbone(source: Path) -> tuple[nn.Module, Any, str]:
    """(causal LM with dropout off and no KV cache in forward passes, tokenizer, family) from an HF directory."""
    from exporters.source import load_model

    loaded = load_model(source)
    model = loaded.model
    model.config.use_cache = False
    # Dropout off everywhere: PPO's ratio must compare the same deterministic function, and resume
    # equivalence needs it too (SmolLM2 has none; GPT-2 does).
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model, loaded.tokenizer, loaded.family


def hidden_size_of(model: Any) -> int:
    """Width of a transformers model's hidden states (Llama: hidden_size, GPT-2: n_embd)."""
    config = model.config
    return int(config.hidden_size if hasattr(config, "hidden_size") else config.n_embd)


def build_policy(source: Path, config: ModelConfig, seed: int, precision: str | None = None) -> Policy:
    """Load the HF weights at ``source`` (safetensors only) and set up policy, value head and
    reference; the body runs in ``precision`` ("fp32" or "bf16"), by default ``config.precision``
    as this CPU resolves it."""
    model, tokenizer, family = load_backbone(source)
    reference_lm: nn.Module | None = None
    if config.mode == "lora":
        lm: nn.Module = apply_lora(model, config, family, seed)
    else:
        lm = model
        reference_lm = copy.deepcopy(model).eval()
        for param in reference_lm.parameters():
            param.requires_grad_(False)
    value_head = nn.Linear(hidden_size_of(model), 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        value_head.weight.normal_(0.0, config.value_head_std, generator=generator)
        value_head.bias.zero_()
    module = PolicyWithValue(lm, value_head, precision or resolve_precision(config.precision), config.pad_shapes)
    module.eval()  # no dropout; gradients flow in eval mode too
    return Policy(module=module, mode=config.mode, tokenizer=tokenizer, source=source, reference_lm=reference_lm)


def save_value_head(value_head: nn.Linear, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in value_head.state_dict().items()}, str(path))
