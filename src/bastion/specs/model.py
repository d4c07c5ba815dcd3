"""ModelSpec: the shape of a decoder-only transformer, and its presets (data files in data/models/)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, UnknownPresetError, did_you_mean
from bastion.numbers import MAX_LAYERS, MAX_SEQ_LEN, MAX_WIDTH, short_number
from bastion.specs._files import DATA_DIR, check_keys, coerce, read_mapping
from bastion.specs._hashing import cached_hash

MODELS_DIR = DATA_DIR / "models"


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer. Counts are per model (not per device)."""

    __hash__ = cached_hash

    name: str
    #: transformer layers L
    num_layers: int
    #: model width h
    hidden_size: int
    #: attention (query) heads
    num_heads: int
    #: MLP inner width
    ffn_hidden_size: int
    #: vocabulary size V (as padded for the run)
    vocab_size: int
    #: default training sequence length s
    seq_len: int = 2048
    #: key/value heads (GQA); 0 means equal to num_heads
    num_kv_heads: int = 0
    #: per-head width; 0 means hidden_size / num_heads
    head_dim: int = 0
    #: `gelu` (two matrices, GPT) or `swiglu` (three matrices, Llama)
    ffn_type: str = "swiglu"
    #: input embedding shared with the output head
    tied_embeddings: bool = False
    #: `rope`, `learned` (a seq_len×h table) or `alibi` (no parameters)
    position_embedding: str = "rope"
    #: biases in linear layers (GPT/BLOOM style); small, counted for parameter totals
    bias: bool = False
    #: epsilon of the normalisation layers (RMSNorm, or LayerNorm with bias)
    norm_eps: float = 1e-5
    #: RoPE base frequency (10,000 for Llama 2; 500,000 for Llama 3)
    rope_theta: float = 10000.0
    #: per-head RMSNorm of queries and keys over head_dim before RoPE (Qwen3's q_norm / k_norm; one head_dim
    #: weight each, shared by every head)
    qk_norm: bool = False
    #: mixture of experts: routed experts per MoE layer (0 = dense)
    num_experts: int = 0
    #: routed experts each token is sent to
    top_k: int = 0
    #: MLP width of one expert, routed and shared alike (0 = ffn_hidden_size)
    moe_ffn_hidden_size: int = 0
    #: always-active experts of each MoE layer (DeepSeek, Qwen2-MoE); run as one MLP of their summed width
    num_shared_experts: int = 0
    #: the first k layers keep a dense MLP of ffn_hidden_size (DeepSeek's first_k_dense_replace)
    dense_layers: int = 0
    #: router scores: `softmax` over all experts (Mixtral, Qwen3) or per-expert `sigmoid` (DeepSeek-V3)
    router: str = "softmax"
    #: rescale the top-k scores of a token to sum to one (Qwen3's norm_topk_prob; softmax over the top-k
    #: logits, as Mixtral computes it, is the same thing)
    router_norm_topk: bool = True
    #: weight of the load-balancing loss added to the training loss (0 = none)
    aux_loss_coeff: float = 0.0
    #: DeepSeek-V3's auxiliary-loss-free balancing: after each step every expert's routing bias moves by this
    #: much towards balance (0 = no bias)
    router_bias_update_rate: float = 0.0
    #: tokens an expert takes, as a multiple of its balanced share; 0 = dropless (no token is dropped)
    capacity_factor: float = 0.0
    #: node-limited routing (DeepSeek-V3): each token's experts lie on at most this many nodes, picked by their
    #: best expert scores, and the dispatch sends a token once to each of those nodes, which forward it to their
    #: GPUs over NVLink; 0 = no limit
    max_routed_nodes: int = 0
    #: every k-th layer after the dense ones has experts (Llama 4's interleave_moe_layer_step; 1 = all)
    moe_layer_freq: int = 1
    #: multi-head latent attention (DeepSeek-V2/V3) when kv_lora_rank > 0: keys and values are rebuilt per head
    #: from one compressed latent of kv_lora_rank; queries from one of q_lora_rank (0 = queries not compressed)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    #: MLA per-head widths: the rotary part of q/k (shared by all heads for k), the non-rotary part, and v
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    #: where the shape comes from
    source: str = ""

    def __post_init__(self) -> None:
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.kv_lora_rank and self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.qk_nope_head_dim + self.qk_rope_head_dim)
        if self.head_dim == 0 and self.num_heads > 0:
            if self.hidden_size % self.num_heads:
                raise ConfigError(f"model '{self.name}': hidden_size {self.hidden_size} is not divisible by "
                                  f"num_heads {self.num_heads}, so the head width is undefined.",
                                  fix="choose num_heads dividing hidden_size, or set head_dim explicitly.")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        self._check()

    def _check(self) -> None:
        what = f"model '{self.name}'"
        for name in ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "vocab_size", "seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{what}: {name} must be positive, got {getattr(self, name)}.",
                                  fix=f"set {name} to a positive integer.")
        for name in ("num_kv_heads", "head_dim", "num_experts", "top_k", "moe_ffn_hidden_size", "num_shared_experts",
                     "dense_layers", "aux_loss_coeff", "router_bias_update_rate", "capacity_factor", "max_routed_nodes",
                     "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{what}: {name} must be >= 0, got {getattr(self, name)}.",
                                  fix=f"set {name} to 0 (its default) or a positive integer.")
        limits = {"num_layers": MAX_LAYERS, "seq_len": MAX_SEQ_LEN}
        for name in ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "vocab_size", "seq_len",
                     "num_kv_heads", "head_dim", "num_experts", "top_k", "moe_ffn_hidden_size",
                     "num_shared_experts", "dense_layers", "moe_layer_freq", "q_lora_rank", "kv_lora_rank",
                     "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
            high = limits.get(name, MAX_WIDTH)
            if getattr(self, name) > high:
                raise ConfigError(f"{what}: {name} must be <= {high:,}, got {short_number(getattr(self, name))}: "
                                  f"that is beyond anything bastion plans for.", fix=f"set {name} to the model's "
                                                                                     f"real value.")
        if self.num_experts and not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"{what}: a mixture of {self.num_experts} experts needs 1 <= top_k <= "
                              f"{self.num_experts}, got top_k = {self.top_k}.",
                              fix="set top_k to the number of experts each token is routed to (e.g. 2).")
        if self.num_experts:
            self._check_moe(what)
        if self.moe_layer_freq < 1:
            raise ConfigError(f"{what}: moe_layer_freq must be >= 1, got {self.moe_layer_freq}.",
                              fix="1 puts experts in every layer after the dense ones, 2 in every other layer.")
        if self.kv_lora_rank:
            self._check_mla(what)
        elif self.q_lora_rank or self.qk_rope_head_dim or self.qk_nope_head_dim or self.v_head_dim:
            raise ConfigError(f"{what}: the MLA widths (q_lora_rank, qk_rope_head_dim, qk_nope_head_dim, "
                              f"v_head_dim) need kv_lora_rank > 0.",
                              fix="set kv_lora_rank for multi-head latent attention, or remove the MLA widths.")
        if self.ffn_type not in ("gelu", "swiglu"):
            raise ConfigError(f"{what}: ffn_type '{self.ffn_type}' is not known.",
                              fix="use 'gelu' (two matrices) or 'swiglu' (three matrices).")
        if self.position_embedding not in ("rope", "learned", "alibi"):
            raise ConfigError(f"{what}: position_embedding '{self.position_embedding}' is not known.",
                              fix="use 'rope', 'learned' or 'alibi'.")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{what}: num_heads {self.num_heads} is not a multiple of num_kv_heads "
                              f"{self.num_kv_heads}.", fix="GQA needs each kv head shared by a whole group.")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ConfigError(f"{what}: norm_eps and rope_theta must be positive, got {self.norm_eps:g} and "
                              f"{self.rope_theta:g}.", fix="e.g. norm_eps = 1e-5, rope_theta = 10000.")
        if self.position_embedding == "rope" and self.head_dim % 2:
            raise ConfigError(f"{what}: RoPE needs an even head_dim, got {self.head_dim}.",
                              fix="choose num_heads (or head_dim) so that the head width is even.")
        if self.qk_norm and self.bias:
            raise ConfigError(f"{what}: per-head q/k RMSNorms (qk_norm) in a model with biases and LayerNorm are "
                              f"not modelled.", fix="set qk_norm = false, or bias = false (Qwen3 has no biases).")

    def _check_mla(self, what: str) -> None:
        if not (self.qk_rope_head_dim and self.qk_nope_head_dim and self.v_head_dim):
            raise ConfigError(f"{what}: multi-head latent attention needs qk_rope_head_dim, qk_nope_head_dim and "
                              f"v_head_dim (got {self.qk_rope_head_dim}, {self.qk_nope_head_dim}, "
                              f"{self.v_head_dim}).", fix="copy them from the model's config (DeepSeek-V3: 64, "
                                                          "128, 128).")
        if self.head_dim != self.qk_nope_head_dim + self.qk_rope_head_dim:
            raise ConfigError(f"{what}: with MLA the query/key head width is qk_nope_head_dim + qk_rope_head_dim "
                              f"= {self.qk_nope_head_dim + self.qk_rope_head_dim}, but head_dim is "
                              f"{self.head_dim}.", fix="leave head_dim unset (0) for an MLA model.")
        if self.num_kv_heads != self.num_heads:
            raise ConfigError(f"{what}: MLA rebuilds keys and values for every head; num_kv_heads must equal "
                              f"num_heads.", fix="leave num_kv_heads unset (0) for an MLA model.")
        if self.bias:
            raise ConfigError(f"{what}: MLA with linear biases is not modelled.", fix="set bias = false.")
        if self.qk_norm:
            raise ConfigError(f"{what}: per-head q/k norms (qk_norm) with MLA are not modelled (MLA normalises its "
                              f"latents instead).", fix="set qk_norm = false for an MLA model.")

    def _check_moe(self, what: str) -> None:
        if self.dense_layers >= self.num_layers:
            raise ConfigError(f"{what}: dense_layers {self.dense_layers} leaves no mixture-of-experts layer of "
                              f"{self.num_layers}.", fix="set dense_layers below num_layers, or num_experts = 0.")
        if self.router not in ("softmax", "sigmoid"):
            raise ConfigError(f"{what}: router '{self.router}' is not known.", fix="use 'softmax' or 'sigmoid'.")
        if self.bias:
            raise ConfigError(f"{what}: mixture-of-experts layers with linear biases are not modelled.",
                              fix="set bias = false (no published MoE model uses them).")

    # ---- derived shapes -------------------------------------------------------------------------
    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def attention_kind(self) -> str:
        """`mla`, `mha` or `gqa` (the case files' `attention` column)."""
        if self.is_mla:
            return "mla"
        return "mha" if self.num_kv_heads == self.num_heads else "gqa"

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def v_width(self) -> int:
        """Width of the attention output before the output projection (all heads' values)."""
        return self.num_heads * (self.v_head_dim if self.is_mla else self.head_dim)

    @property
    def ffn_matrices(self) -> int:
        return 3 if self.ffn_type == "swiglu" else 2

    def mla_params_per_layer(self) -> int:
        """MLA's weights (DeepSeek-V3, HF DeepseekV3Attention): query down/up projections (or one projection when
        q_lora_rank is 0) with the latent's RMSNorm, the joint key/value down projection (latent plus the shared
        rotary key) with its RMSNorm, the per-head key/value up projection, and the output projection."""
        h, heads = self.hidden_size, self.num_heads
        q_head = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank:
            q = h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * heads * q_head
        else:
            q = h * heads * q_head
        kv = (h * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
              + self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim))
        return q + kv + heads * self.v_head_dim * h

    def attention_params_per_layer(self) -> int:
        if self.is_mla:
            return self.mla_params_per_layer()
        h = self.hidden_size
        weights = h * self.q_width + 2 * h * self.kv_width + self.q_width * h
        biases = (self.q_width + 2 * self.kv_width + h) if self.bias else 0
        return weights + biases

    @property
    def expert_width(self) -> int:
        """Inner width of one expert (routed or shared)."""
        return self.moe_ffn_hidden_size or self.ffn_hidden_size

    @cached_property
    def num_moe_layers(self) -> int:
        # cached: the predictor's FLOPs count asks for it on every plan
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    def is_moe_layer(self, index: int) -> bool:
        """Layer `index` (0-based) has a mixture of experts: the first `dense_layers` keep a dense MLP, and with
        moe_layer_freq k only every k-th layer has experts (HF Llama 4: index % k == k - 1)."""
        if not self.num_experts or index < self.dense_layers:
            return False
        return index % self.moe_layer_freq == self.moe_layer_freq - 1

    def dense_mlp_params(self) -> int:
        h, f = self.hidden_size, self.ffn_hidden_size
        biases = ((self.ffn_matrices - 1) * f + h) if self.bias else 0
        return self.ffn_matrices * h * f + biases

    def routed_expert_params(self) -> int:
        """Weights of all routed experts of one MoE layer (what expert parallelism shards)."""
        return self.num_experts * self.ffn_matrices * self.hidden_size * self.expert_width

    def moe_mlp_params(self, active: bool = False) -> int:
        """One MoE layer's MLP: router, routed experts (only top_k of them when `active`) and shared experts."""
        one_expert = self.ffn_matrices * self.hidden_size * self.expert_width
        routed = self.top_k * one_expert if active else self.routed_expert_params()
        return self.hidden_size * self.num_experts + routed + self.num_shared_experts * one_expert

    def mlp_params_per_layer(self) -> int:
        """MLP parameters of an MoE layer (of every layer for a dense model)."""
        return self.moe_mlp_params() if self.num_experts else self.dense_mlp_params()

    def norm_params_per_layer(self) -> int:
        # two norms per layer; LayerNorm (GPT) has a bias, RMSNorm (Llama) does not; Qwen3's q/k norms add two
        # RMSNorms of head_dim
        return 2 * self.hidden_size * (2 if self.bias else 1) + (2 * self.head_dim if self.qk_norm else 0)

    def layer_params(self, index: int, active: bool = False) -> int:
        """Parameters of layer `index`; `active`: those one token passes through (top_k of the routed experts)."""
        mlp = self.moe_mlp_params(active) if self.is_moe_layer(index) else self.dense_mlp_params()
        return self.attention_params_per_layer() + mlp + self.norm_params_per_layer()

    def params_per_layer(self) -> int:
        """Parameters of the last layer (an MoE layer when the model has experts)."""
        return self.layer_params(self.num_layers - 1)

    def embedding_params(self) -> int:
        table = self.vocab_size * self.hidden_size
        if self.position_embedding == "learned":
            table += self.seq_len * self.hidden_size
        return table

    def output_params(self) -> int:
        """The LM head (0 when tied) plus the final norm."""
        head = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        return head + self.hidden_size * (2 if self.bias else 1)

    def total_params(self) -> int:
        layers = sum(self.layer_params(i) for i in range(self.num_layers))
        return self.embedding_params() + layers + self.output_params()

    def active_params(self) -> int:
        """Parameters one token passes through (the published "activated" count of an MoE model)."""
        layers = sum(self.layer_params(i, active=True) for i in range(self.num_layers))
        return self.embedding_params() + layers + self.output_params()

    def active_params_per_layer(self) -> int:
        """Parameters a token touches in the last layer (differs from params_per_layer only for MoE)."""
        return self.layer_params(self.num_layers - 1, active=True)

    def matmul_params(self) -> int:
        """Parameters that take part in matrix multiplies per token: layers + LM head (PaLM's N)."""
        layers = sum(self.layer_params(i, active=True) for i in range(self.num_layers))
        return layers + self.vocab_size * self.hidden_size

    def with_seq_len(self, seq_len: int) -> ModelSpec:
        """This model at another sequence length (learned position tables are sized by it); itself if unchanged,
        so the predictor's caches keep hitting the same object."""
        if seq_len == self.seq_len:
            return self
        data = asdict(self)
        data["seq_len"] = seq_len
        return ModelSpec(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: field names of earlier bastion versions (model.json of older run directories and checkpoints) -> today's
RENAMED_FIELDS = {"expert_ffn_hidden_size": "moe_ffn_hidden_size"}


def model_from_mapping(data: dict[str, Any], what: str) -> ModelSpec:
    data = {RENAMED_FIELDS.get(k, k): v for k, v in data.items()}
    check_keys(data, ModelSpec, what)
    types = {f.name: f.type for f in fields(ModelSpec)}
    missing = [n for n in ("num_layers", "hidden_size", "num_heads", "ffn_hidden_size", "vocab_size")
               if n not in data]
    if missing:
        raise ConfigError(f"{what} is missing {', '.join(missing)}.",
                          fix="a model file needs at least num_layers, hidden_size, num_heads, "
                              "ffn_hidden_size and vocab_size.")
    values = {k: coerce(v, types[k], k, what) for k, v in data.items()}
    values.setdefault("name", what)
    return ModelSpec(**values)


def model_presets() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.toml"))


def load_model(name_or_path: str, seq_len: int | None = None) -> ModelSpec:
    """A preset name (see `bastion models`), a path to a TOML/JSON model file, or a Hugging Face model's
    `config.json` (or its directory; interop/hf_config.py maps it)."""
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.suffix in (".toml", ".json") or path.exists():
        data = read_mapping(path)
        from bastion.interop.hf_config import is_hf_config, spec_from_hf_config

        model = spec_from_hf_config(data, str(path)) if is_hf_config(data) else model_from_mapping(data, str(path))
    else:
        preset = MODELS_DIR / f"{name_or_path}.toml"
        if not preset.exists():
            raise UnknownPresetError(
                f"Unknown model '{name_or_path}'.{did_you_mean(name_or_path, model_presets())}",
                fix="use a preset name or a path to a .toml/.json model file.",
                hint="bastion models   # lists the presets")
        data = read_mapping(preset)
        data.setdefault("name", name_or_path)
        model = model_from_mapping(data, f"preset '{name_or_path}'")
    return model.with_seq_len(seq_len) if seq_len else model

