"""Configuration of Clinical ModernBERT.

Clinical ModernBERT is an exact ModernBERT (Warner et al., 2024): the same parameters, the same alternating
local/global attention and the same RoPE, so `answerdotai/ModernBERT-base` weights load and keep training without
loss. This file is Hub remote code: it imports only `transformers`.

The config reads every key name that transformers has used for ModernBERT:

- transformers 4.x: `global_attn_every_n_layers`, `global_rope_theta`, `local_rope_theta`;
- transformers 5.x: `layer_types` (`"full_attention"` / `"sliding_attention"`) and `rope_parameters`
  (`{"full_attention": {"rope_theta": ...}, "sliding_attention": {...}}`).

It always writes the 4.x-style keys plus `layer_types`, which both generations understand.
"""

from __future__ import annotations

from typing import Any

from transformers.utils import logging

try:  # transformers >= 4.56 spells it PreTrainedConfig; 4.x and 5.x both export PretrainedConfig.
    from transformers import PretrainedConfig
except ImportError:  # pragma: no cover - defensive for a future rename
    from transformers import PreTrainedConfig as PretrainedConfig


logger = logging.get_logger(__name__)

ATTENTION_BACKENDS = ("auto", "flash_attention_2", "sdpa", "eager")
VARLEN_KERNELS = ("auto", "flash-attn-4", "flash-attn", "torch")
LOCAL_ATTENTION_KERNELS = ("auto", "varlen")
LINEAR_KERNELS = ("auto", "quack", "torch")
COMPILE_MODES = ("auto", "on", "off")
RESIDUAL_DTYPES = ("float32", "autocast")
LAYER_TYPES = ("full_attention", "sliding_attention")

# Keys that older ModernBERT configs carry and that have no meaning here; they are dropped on load.
_LEGACY_KEYS = ("reference_compile", "repad_logits_with_grad", "sliding_window")

_AUTO_MAP = {
    "AutoConfig": "configuration_clinical_modernbert.ClinicalModernBertConfig",
    "AutoModel": "modeling_clinical_modernbert.ClinicalModernBertModel",
    "AutoModelForMaskedLM": "modeling_clinical_modernbert.ClinicalModernBertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_clinical_modernbert.ClinicalModernBertForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_clinical_modernbert.ClinicalModernBertForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_clinical_modernbert.ClinicalModernBertForQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_clinical_modernbert.ClinicalModernBertForMultipleChoice",
}

PRESETS: dict[str, dict[str, Any]] = {
    # answerdotai/ModernBERT-base
    "base": dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
                 mask_token_id=50284),
    # answerdotai/ModernBERT-large
    "large": dict(hidden_size=1024, intermediate_size=2624, num_hidden_layers=28, num_attention_heads=16,
                  mask_token_id=50284),
    # For tests: small enough for a CPU, with every structural feature (layer 0 global, local windows).
    "tiny": dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=512,
        local_attention=16,
        pad_token_id=0,
        bos_token_id=1,
        cls_token_id=1,
        eos_token_id=2,
        sep_token_id=2,
        mask_token_id=3,
    ),
}


class ClinicalModernBertConfig(PretrainedConfig):
    r"""Configuration for [`ClinicalModernBertModel`] and its task heads. Defaults are ModernBERT-base.

    Args:
        vocab_size (`int`, defaults to 50368): Vocabulary size (a multiple of 64).
        hidden_size (`int`, defaults to 768): Width of the residual stream.
        intermediate_size (`int`, defaults to 1152): Width of the GeGLU MLP (its input projection is twice this).
        num_hidden_layers (`int`, defaults to 22): Number of encoder layers.
        num_attention_heads (`int`, defaults to 12): Attention heads; `hidden_size` must divide evenly.
        hidden_activation (`str`, defaults to `"gelu"`): Activation of the GeGLU MLP (exact GELU).
        max_position_embeddings (`int`, defaults to 8192): Longest sequence (per document) the model accepts.
        initializer_range (`float`, defaults to 0.02): Std of the truncated normal initialiser.
        initializer_cutoff_factor (`float`, defaults to 2.0): Truncation at this many std.
        norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        norm_bias (`bool`, defaults to `False`): LayerNorms with a bias.
        pad_token_id, bos_token_id, eos_token_id, cls_token_id, sep_token_id, mask_token_id (`int`):
            Special token ids (ModernBERT's tokenizer: 50283, 50281, 50282, 50281, 50282, 50284). `mask_token_id`
            is informational (native ModernBERT configs do not carry it) and may be None.
        global_rope_theta (`float`, defaults to 160000.0): RoPE base of the global (full attention) layers.
        local_rope_theta (`float`, defaults to 10000.0): RoPE base of the local (sliding window) layers.
        attention_bias (`bool`, defaults to `False`): Biases in `Wqkv` and `Wo`.
        attention_dropout (`float`, defaults to 0.0): Dropout on attention probabilities and on the output.
        global_attn_every_n_layers (`int`, defaults to 3): Layer `i` is global when `i % n == 0`.
        layer_types (`list[str]`, *optional*): Explicit per-layer pattern (`"full_attention"` or
            `"sliding_attention"`); overrides `global_attn_every_n_layers`.
        local_attention (`int`, defaults to 128): Total width of the local window: a token sees +-64 tokens.
        embedding_dropout, mlp_dropout, classifier_dropout (`float`): Dropout rates (0.0 in ModernBERT).
        mlp_bias (`bool`), decoder_bias (`bool`, defaults to `True`), classifier_bias (`bool`): Biases.
        classifier_pooling (`str`, defaults to `"cls"`): `"cls"` or `"mean"` pooling for sequence-level heads.
        classifier_activation (`str`, defaults to `"gelu"`): Activation of the prediction head.
        deterministic_flash_attn (`bool`, defaults to `False`): Deterministic backward in flash_attn.
        sparse_prediction (`bool`, defaults to `True`): With labels, the MLM head scores only the labelled
            (masked) tokens and `logits` has shape `(num_masked, vocab_size)`.
        sparse_pred_ignore_index (`int`, defaults to -100): Label value of unmasked tokens.
        attention_backend (`str`, defaults to `"auto"`): `"flash_attention_2"` (unpadded varlen kernels from
            `flash_attn` when installed, else `torch.nn.attention.varlen`), `"sdpa"`, `"eager"`, or `"auto"`
            (varlen on CUDA in bf16/fp16, sdpa everywhere else).
        varlen_kernel (`str`, defaults to `"auto"`): the kernels behind `"flash_attention_2"`. `"flash-attn-4"`:
            FlashAttention-4 from the `flash-attn-4` package (`pip install flash-attn-4`: CuTe DSL, nothing to
            compile), Hopper and Blackwell GPUs only (compute capability 9.x, 10.x). `"flash-attn"`: the `flash-attn`
            package's FlashAttention-2. `"torch"`: the FlashAttention-2 kernels in `torch.nn.attention.varlen`
            (torch >= 2.10). `"auto"`: the first of these that is installed and runs on the GPU.
        local_attention_kernel (`str`, defaults to `"auto"`): the kernel of the local (sliding-window) layers on the
            compiled varlen path. `"auto"`: this model's Triton kernels for the window (`local_attention` in the
            modeling file: RoPE inside, a 64-query block visits at most 192 keys), wherever they run (CUDA, Triton,
            fp16/bf16, head_dim 32 or 64, no attention dropout in training); `"varlen"`: `varlen_kernel`'s
            FlashAttention, as in the global layers.
        linear_kernel (`str`, defaults to `"auto"`): the GEMMs of the encoder layers in training on the compiled
            varlen path. `"quack"`: GEMMs from the `quack-kernels` package (which `flash-attn-4` installs; CuTe DSL,
            Hopper and Blackwell GPUs) with fused epilogues: the MLP's `Wi` applies GeGLU (exact GELU) as it writes,
            its backward applies GeGLU's derivative and recomputes GeGLU's output instead of storing it, and both
            output projections add the residual; weight and input gradients stay on cuBLAS. Needs bf16, exact GELU,
            no biases in the layers and the residual stream in the autocast dtype; a wrapped Linear (PEFT's LoRA)
            keeps its own forward. `"torch"`: cuBLAS and this model's
            Triton GeGLU op. `"auto"`: `"quack"` where it runs and the layers replay CUDA graphs (`cuda_graphs=True`:
            without graphs, each quack call does its argument handling in Python, on a step often short of CPU time
            already), else `"torch"`.
        compile_layers (`str`, defaults to `"auto"`): run the blocks around attention (norms, projections, RoPE,
            GeGLU, residuals; with torch's varlen kernel the whole layer) through `torch.compile`: `"auto"` on CUDA
            with Triton installed (the first batch then takes some seconds to compile), `"on"` always (needs a
            working compiler), `"off"` never. Shapes are dynamic, so new batch shapes do not recompile. A compile
            error falls back to eager.
        mlm_loss_chunk_size (`int`, defaults to 4096): in training, the sparse MLM loss runs over chunks of this many
            masked tokens with a fused linear cross-entropy that makes each chunk's gradients in the forward pass,
            so full-vocabulary logits never exist for more than one chunk (`logits` is then None); 0 returns the
            logits and computes the loss in one piece. Fewer chunks mean fewer passes over the fp32 decoder-weight
            gradient: at train-1024 on an H100, 4096 ran 0.9% faster than 2048 for 0.29 GiB more (BENCHMARKS.md).
        residual_dtype (`str`, defaults to `"autocast"`): under autocast, the dtype of the residual stream between
            layers. `"autocast"` keeps it in the autocast dtype (bf16/fp16), like Megatron-style mixed precision:
            norms still compute in fp32 on CUDA (autocast's policy), and saved activations are half the size.
            `"float32"` keeps it in fp32, as transformers' ModernBERT does under autocast. Without autocast the
            stream has the weights' dtype either way.
        activation_memory_budget (`float`, defaults to 1.0): the share of activations that compiled layers keep for
            backward (torch's `activation_memory_budget`); lower recomputes more in backward, trading speed for
            memory. On an H100, base at 1,024 tokens (`cuda_graphs`): 1.0 -> 12.7 GiB, 0.8 -> 9.9 GiB at 2.5% less
            throughput (BENCHMARKS.md). Applies to the compiled varlen layers (CUDA).
        cuda_graphs (`bool`, defaults to `False`): in training steps (gradients enabled), the compiled blocks replay
            CUDA graphs (`torch.compile`'s `mode="reduce-overhead"`), so that the GPU no longer waits for Python to
            launch some 900 kernels per step. A packed batch is padded to a few static shapes for it (tokens to a
            multiple of 1,024 with one `[PAD]` document, documents to a power of two with empty ones, `max_seqlen` to
            a multiple of 1,024, the MLM's masked tokens to a multiple of 1,024 rows); each new shape records its
            graphs once. It pays where the host is slow: on an H100 whose host took 54-74 ms to launch a 63 ms step,
            train-1024 ran at 393.6k instead of 361.8k tokens/s, in 0.2 GiB more (BENCHMARKS.md). Each forward
            starts a new graph step (`torch.compiler.cudagraph_mark_step_begin`): run one forward's backward before
            the next forward. CUDA only; not with gradient checkpointing; inference keeps the plain compiled path.
            In a 150-step `python -m train` run, recording graphs for new batch shapes cost more than the replays
            saved (BENCHMARKS.md); long runs were not measured, nor DDP. Off by default.
    """

    model_type = "clinical_modernbert"
    keys_to_ignore_at_inference = ["hidden_states"]

    def __init__(
        self,
        vocab_size: int = 50368,
        hidden_size: int = 768,
        intermediate_size: int = 1152,
        num_hidden_layers: int = 22,
        num_attention_heads: int = 12,
        hidden_activation: str = "gelu",
        max_position_embeddings: int = 8192,
        initializer_range: float = 0.02,
        initializer_cutoff_factor: float = 2.0,
        norm_eps: float = 1e-5,
        norm_bias: bool = False,
        pad_token_id: int = 50283,
        eos_token_id: int = 50282,
        bos_token_id: int = 50281,
        cls_token_id: int = 50281,
        sep_token_id: int = 50282,
        mask_token_id: int | None = None,
        global_rope_theta: float = 160000.0,
        local_rope_theta: float = 10000.0,
        attention_bias: bool = False,
        attention_dropout: float = 0.0,
        global_attn_every_n_layers: int = 3,
        layer_types: list[str] | None = None,
        local_attention: int = 128,
        embedding_dropout: float = 0.0,
        mlp_bias: bool = False,
        mlp_dropout: float = 0.0,
        decoder_bias: bool = True,
        classifier_pooling: str = "cls",
        classifier_dropout: float = 0.0,
        classifier_bias: bool = False,
        classifier_activation: str = "gelu",
        deterministic_flash_attn: bool = False,
        sparse_prediction: bool = True,
        sparse_pred_ignore_index: int = -100,
        attention_backend: str = "auto",
        varlen_kernel: str = "auto",
        local_attention_kernel: str = "auto",
        linear_kernel: str = "auto",
        compile_layers: str = "auto",
        mlm_loss_chunk_size: int = 4096,
        residual_dtype: str = "autocast",
        activation_memory_budget: float = 1.0,
        cuda_graphs: bool = False,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        # transformers 5.x spelling of the RoPE bases.
        rope_parameters = kwargs.pop("rope_parameters", None)
        if rope_parameters:
            for layer_type, params in rope_parameters.items():
                if params is None:
                    continue
                rope_type = params.get("rope_type", params.get("type", "default"))
                if rope_type != "default":
                    raise ValueError(f"rope_parameters[{layer_type!r}].rope_type={rope_type!r} is not supported")
                if layer_type == "full_attention" and "rope_theta" in params:
                    global_rope_theta = params["rope_theta"]
                elif layer_type == "sliding_attention" and "rope_theta" in params:
                    local_rope_theta = params["rope_theta"]
        if kwargs.pop("rope_scaling", None):
            raise ValueError("rope_scaling is not supported by Clinical ModernBERT")
        for key in _LEGACY_KEYS:
            kwargs.pop(key, None)
        kwargs.setdefault("auto_map", dict(_AUTO_MAP))
        # pipeline() in transformers 4.x loads a tokenizer for remote-code models only when the config names one.
        kwargs.setdefault("tokenizer_class", "PreTrainedTokenizerFast")

        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_activation = hidden_activation
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.initializer_cutoff_factor = initializer_cutoff_factor
        self.norm_eps = norm_eps
        self.norm_bias = norm_bias
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.mask_token_id = mask_token_id
        self.global_rope_theta = float(global_rope_theta)
        self.local_rope_theta = float(local_rope_theta)
        self.attention_bias = attention_bias
        self.attention_dropout = attention_dropout
        self.local_attention = local_attention
        self.embedding_dropout = embedding_dropout
        self.mlp_bias = mlp_bias
        self.mlp_dropout = mlp_dropout
        self.decoder_bias = decoder_bias
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = classifier_dropout
        self.classifier_bias = classifier_bias
        self.classifier_activation = classifier_activation
        self.deterministic_flash_attn = deterministic_flash_attn
        self.sparse_prediction = sparse_prediction
        self.sparse_pred_ignore_index = sparse_pred_ignore_index
        self.attention_backend = attention_backend
        self.varlen_kernel = varlen_kernel
        self.local_attention_kernel = local_attention_kernel
        self.linear_kernel = linear_kernel
        self.compile_layers = compile_layers
        self.mlm_loss_chunk_size = mlm_loss_chunk_size
        self.residual_dtype = residual_dtype
        self.activation_memory_budget = activation_memory_budget
        self.cuda_graphs = cuda_graphs
        if layer_types is None:
            _check_positive_int("global_attn_every_n_layers", global_attn_every_n_layers)
            layer_types = [
                "full_attention" if i % global_attn_every_n_layers == 0 else "sliding_attention"
                for i in range(num_hidden_layers)
            ]
        self.layer_types = list(layer_types)
        self.global_attn_every_n_layers = _regular_period(self.layer_types)
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first field whose value cannot build a model."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings", "local_attention"):
            _check_positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"head_dim={self.hidden_size // self.num_attention_heads} must be even for RoPE")
        if self.local_attention % 2:
            raise ValueError(f"local_attention={self.local_attention} must be even (a window of +-local_attention/2)")
        for name in ("attention_dropout", "embedding_dropout", "mlp_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be in [0, 1)")
        for name in ("global_rope_theta", "local_rope_theta", "norm_eps", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
            value = getattr(self, name, None)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary (vocab_size={self.vocab_size})")
        if self.classifier_pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling={self.classifier_pooling!r} must be 'cls' or 'mean'")
        if self.compile_layers not in COMPILE_MODES:
            raise ValueError(f"compile_layers={self.compile_layers!r} must be one of {COMPILE_MODES}")
        if not isinstance(self.mlm_loss_chunk_size, int) or self.mlm_loss_chunk_size < 0:
            raise ValueError(f"mlm_loss_chunk_size={self.mlm_loss_chunk_size!r} must be an integer >= 0")
        budget = self.activation_memory_budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
            raise ValueError(f"activation_memory_budget={self.activation_memory_budget!r} must be a number in (0, 1]")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs={self.cuda_graphs!r} must be True or False")
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(f"residual_dtype={self.residual_dtype!r} must be one of {RESIDUAL_DTYPES}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend={self.attention_backend!r} must be one of {ATTENTION_BACKENDS}")
        if self.varlen_kernel not in VARLEN_KERNELS:
            raise ValueError(f"varlen_kernel={self.varlen_kernel!r} must be one of {VARLEN_KERNELS}")
        if self.local_attention_kernel not in LOCAL_ATTENTION_KERNELS:
            raise ValueError(f"local_attention_kernel={self.local_attention_kernel!r} must be one of "
                             f"{LOCAL_ATTENTION_KERNELS}")
        if self.linear_kernel not in LINEAR_KERNELS:
            raise ValueError(f"linear_kernel={self.linear_kernel!r} must be one of {LINEAR_KERNELS}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers={self.num_hidden_layers}"
            )
        bad = [t for t in self.layer_types if t not in LAYER_TYPES]
        if bad:
            raise ValueError(f"layer_types contains {bad[0]!r}; allowed: {LAYER_TYPES}")

    @classmethod
    def get_config_dict(cls, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read our folders and transformers-native `modernbert` folders; refuse other architectures."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type == "modernbert":
            logger.info("Converting a transformers ModernBERT config into a Clinical ModernBERT config")
            config_dict = {**config_dict, "model_type": cls.model_type}
        elif model_type not in (None, cls.model_type):
            raise ValueError(
                f"config has model_type={model_type!r}; Clinical ModernBERT loads 'clinical_modernbert' or "
                "'modernbert' checkpoints only"
            )
        return config_dict, kwargs

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def local_window(self) -> int:
        """Half window: a local-layer token attends to tokens at distance <= local_window."""
        return self.local_attention // 2

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ClinicalModernBertConfig:
        """A config for a named geometry (`"base"`, `"large"`, `"tiny"`), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_modernbert_config(cls, config: Any, **overrides: Any) -> ClinicalModernBertConfig:
        """Convert a transformers `ModernBertConfig` (or its dict, 4.x or 5.x keys) into ours."""
        values = dict(config if isinstance(config, dict) else config.to_dict())
        for key in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path"):
            values.pop(key, None)
        values.update(overrides)
        return cls(**values)

    def to_modernbert_dict(self) -> dict[str, Any]:
        """Keyword arguments for `transformers.ModernBertConfig`, understood by 4.48 and 5.x alike."""
        values = self.to_dict()
        for key in ("model_type", "architectures", "auto_map", "attention_backend", "varlen_kernel", "layer_types",
                    "local_attention_kernel", "linear_kernel", "compile_layers", "mlm_loss_chunk_size",
                    "residual_dtype", "activation_memory_budget", "cuda_graphs", "transformers_version",
                    "_name_or_path", "mask_token_id"):
            values.pop(key, None)
        if self.global_attn_every_n_layers is None:
            raise ValueError("this layer_types pattern cannot be expressed as a native ModernBERT config")
        return values


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _regular_period(layer_types: list[str]) -> int | None:
    """The n with `layer i global iff i % n == 0`, or None for an irregular pattern."""
    for n in range(1, len(layer_types) + 1):
        if all((t == "full_attention") == (i % n == 0) for i, t in enumerate(layer_types)):
            return n
    return None


__all__ = ["ClinicalModernBertConfig"]
