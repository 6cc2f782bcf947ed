"""Predict the peak host and device memory of a pruning run from the model's config alone.

``plan_memory(config, MemorySettings(...))`` reads no weight: the shapes come from the config
(``prunekit.models.shapes``), the rest from the settings. The prediction is a list of named
terms, each the bytes one thing the run holds, read off the code that holds it:

weights
    In memory (``load_model``): the whole model in the compute dtype, for the whole run.
    Streamed (``LazyModel`` + ``engine.residency.Streamed``): one decoder layer at a time; at the
    start only row slices for the weight fingerprint, then the embedding (with the small rest),
    then each layer; an untied LM head is copied to the export in row slices, never whole.
fingerprint samples
    ``models.fingerprint.weight_fingerprint``: up to 2^18 values of the embedding and of every
    matrix of the first and last layers, as bf16 samples, their bf16 concatenation and the
    ±1 sketch vector (int8; each chunk widened to fp32 on its own): about 5 bytes a sampled
    value, on the host. A streamed run reads those tensors one row slice at a time
    (``engine.residency.Streamed.identity``): two slices (read, cast) at the start.
slicing copies
    Pruning a block builds its sliced weights while the dense ones still exist (and FASP clones
    the consumer before writing the restored columns): the kept part of the MLP block plus one
    consumer matrix.
shard buffer (streamed)
    ``export.shards.ShardWriter`` holds the current output shard (up to ``max_shard_size``) and
    one more shard's worth while safetensors serializes it (a tensor larger than a shard is
    written alone, one row slice at a time), on the host. Under a budget the shard size is
    chosen from it (``shard_size_for``).
calibration hidden states
    ``engine.sequential``: n_samples × seqlen × hidden_size in the compute dtype, twice while a
    block runs (its inputs and its outputs); for an attention block a method changes (FASP,
    Wanda-sp) the o_proj inputs of every window are kept for the replay (n_samples × seqlen ×
    num_heads × head_dim) as well. Methods without data (magnitude) hold none. With
    ``offload_activations`` (GPU) they are host memory and the device holds one batch's
    inputs and outputs.
statistics
    ``InputStatistics``: with restoration (FASP) a fp32 Gram matrix width² of the watched
    consumer's input (down_proj: intermediate_size; o_proj: num_heads × head_dim), one block at
    a time; otherwise fp64 sums (negligible).
restoration solve
    ``methods.width.restoration.restore_consumer`` for an out × in consumer keeping k columns:
    W·H (fp32, out·in), H[S,S] and its Cholesky factor (2 × 4k²), the right-hand side, solution
    and the solver's transposed copy (3 × 4·out·k), W[:, S] (out·k) and, below fp32, the fp32
    copy of W. All fp32: the solve runs in fp32 wherever the damping bounds its condition number
    (the default does on every model measured); the rare fp64 fallback is not sized.
block activations
    One batch through one block: for the MLP the gate, up, activation and product
    (4 × batch·seqlen·intermediate_size), plus the fp32 copy the Gram update makes below fp32;
    for attention q, k, v and their rotated copies, and the T×T scores with eager attention.
layer kwargs
    ``engine.layerwise.capture_layer_context``: the rotary cos/sin tables (2 × seqlen × head_dim,
    one set per rotary kind) shared by every layer, and with eager attention the seqlen² mask
    (one per mask kind); SDPA needs no mask tensor.
framework
    The imports (torch, transformers, tokenizers, prunekit): ~300 MiB of host memory measured with
    ``RssAnon``; on a GPU, the CUDA context and kernels (~0.5 GiB of device memory, not counted by
    ``torch.cuda.max_memory_allocated``). A small run slack (allocator, tokenizer state) beside it.

The peak is the terms held for the whole run plus the largest sum of one *phase* (start,
embedding, attention block, MLP block, head): phases do not overlap. On a CPU the compute device
is the host, so every term is host memory and the device peak is None. Depth methods run in
memory only for now; their estimate is the model plus the cached states and one batch's logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from prunekit.errors import SettingsError
from prunekit.memory.budget import MiB
from prunekit.models.families import model_shapes
from prunekit.models.shapes import ModelShapes

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
FINGERPRINT_SAMPLES = 1 << 18  # models.fingerprint.SAMPLE_ELEMENTS
FINGERPRINT_BYTES_PER_SAMPLE = 5  # bf16 samples 2 + their concatenation 2 + signs (int8) 1
FRAMEWORK_HOST = 300 * MiB  # RssAnon after importing torch, transformers and prunekit
CUDA_CONTEXT = 512 * MiB
RUN_SLACK = 8 * MiB  # measured: a streamed FASP run of a tiny model grows RssAnon by 7-10 MB

# What each width method does with the data (engine.sequential's needs_gram/changes_blocks).
WIDTH_METHODS = {
    "fasp": dict(data=True, restore=True, changes_blocks=True),
    "wanda-sp": dict(data=True, restore=False, changes_blocks=True),
    "magnitude": dict(data=False, restore=False, changes_blocks=True),
    "flap": dict(data=True, restore=False, changes_blocks=False),
}
ALWAYS = "whole run"  # the phase of terms held from start to end
COST_CURVE_SPARSITY = 0.125  # methods.width.allocation.CURVE_SPARSITIES[0]: its widest restore


@dataclass(frozen=True)
class MemorySettings:
    method: str = "fasp"
    streamed: bool = False
    n_samples: int = 16
    seqlen: int = 1024
    dtype: str = "bf16"
    batch_size: int = 1
    device: str = "cpu"  # cpu, or cuda[:i]: where the model computes
    sparsity: float = 0.2  # fraction of columns removed (sizes the restoration and slicing)
    targets: tuple[str, ...] = ("mlp", "attn")
    max_shard_size: int = 2 * 10**9  # the export's shard size (ShardWriter's default "2GB")
    attn_implementation: str = "sdpa"
    # Calibration hidden states kept on the host, one batch at a time on the device (GPU only).
    offload_activations: bool = False
    # Rows of the embedding/head read at a time where a streamed run reads them whole otherwise
    # (the weight fingerprint): bytes of one row slice.
    row_slice_bytes: int = 64 * MiB  # DEFAULT_ROW_SLICE_BYTES


@dataclass(frozen=True)
class MemoryTerm:
    name: str
    bytes: int
    where: str  # "host" or "device"
    phase: str  # ALWAYS, or the phase holding it
    note: str


@dataclass
class MemoryPlan:
    settings: MemorySettings
    shapes: ModelShapes
    terms: list[MemoryTerm] = field(default_factory=list)

    def peak(self, where: str) -> int | None:
        """Peak bytes on ``where`` ("host"/"device"); None for the device when it is the CPU."""
        if where == "device" and not self.on_gpu:
            return None
        held = [t for t in self.terms if t.where == where]
        always = sum(t.bytes for t in held if t.phase == ALWAYS)
        phases: dict[str, int] = {}
        for t in held:
            if t.phase != ALWAYS:
                phases[t.phase] = phases.get(t.phase, 0) + t.bytes
        return always + max(phases.values(), default=0)

    def peak_phase(self, where: str) -> str | None:
        sums: dict[str, int] = {}
        for t in self.terms:
            if t.where == where and t.phase != ALWAYS:
                sums[t.phase] = sums.get(t.phase, 0) + t.bytes
        return max(sums, key=sums.__getitem__) if sums else None

    def growth(self, where: str = "host") -> int:
        """The peak without the framework's imports: what a run adds to a started process."""
        framework = sum(
            t.bytes for t in self.terms if t.where == where and t.name.startswith("framework")
        )
        return (self.peak(where) or 0) - framework

    @property
    def on_gpu(self) -> bool:
        return self.settings.device.startswith("cuda")

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": {**self.settings.__dict__, "targets": list(self.settings.targets)},
            "parameters": self.shapes.total_params,
            "terms": [t.__dict__ for t in self.terms],
            "peak_host_bytes": self.peak("host"),
            "peak_device_bytes": self.peak("device"),
            "peak_host_phase": self.peak_phase("host"),
        }


def plan_memory(config: Any, settings: MemorySettings) -> MemoryPlan:
    """The memory terms of a run of ``settings`` on the model ``config`` describes."""
    if "+" in settings.method:
        return _combined_plan(config, settings)
    shapes = model_shapes(config)
    bytes_per = _dtype_bytes(settings.dtype)
    plan = MemoryPlan(settings, shapes)
    compute = "device" if plan.on_gpu else "host"
    terms = _framework_terms(plan.on_gpu)
    if settings.method in WIDTH_METHODS:
        terms += _width_terms(shapes, settings, bytes_per, compute)
    else:
        terms += _depth_terms(shapes, settings, bytes_per, compute)
    plan.terms = [t for t in terms if t.bytes > 0]
    return plan


def _combined_plan(config: Any, settings: MemorySettings) -> MemoryPlan:
    """A combined method (``depth+width``): its stages run one after the other on one model, so
    its peak is the larger of theirs (on the compute device, else the host)."""
    plans = [
        plan_memory(config, replace(settings, method=stage)) for stage in settings.method.split("+")
    ]
    where = "device" if plans[0].on_gpu else "host"
    chosen = max(plans, key=lambda plan: (plan.peak(where) or 0, plan.peak("host") or 0))
    chosen.settings = settings
    return chosen


def plan_memory_for(spec: str, settings: MemorySettings) -> MemoryPlan:
    """``plan_memory`` for a model spec (alias, local directory, hub id, .gguf): config only."""
    from prunekit.models.loading import load_config

    return plan_memory(load_config(spec), settings)


def _dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise SettingsError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    return DTYPE_BYTES[dtype]


def _framework_terms(on_gpu: bool) -> list[MemoryTerm]:
    terms = [
        MemoryTerm("framework (imports)", FRAMEWORK_HOST, "host", ALWAYS, "torch, transformers"),
        MemoryTerm("run slack", RUN_SLACK, "host", ALWAYS, "allocator, tokenizer state"),
    ]
    if on_gpu:
        terms.append(
            MemoryTerm("framework (CUDA context)", CUDA_CONTEXT, "device", ALWAYS, "kernels")
        )
    return terms


def _width_terms(
    s: ModelShapes, settings: MemorySettings, b: int, compute: str
) -> list[MemoryTerm]:
    # Every width method streams. FLAP's recording pass and FASP's cost pass read each layer
    # once more; one layer is resident at a time either way, so the phases' terms hold.
    profile = WIDTH_METHODS[settings.method]
    terms = _weight_terms(s, settings, b, compute)
    if profile["data"]:
        terms += _calibration_terms(s, settings, b, compute, profile)
    return terms


def _weight_terms(
    s: ModelShapes, settings: MemorySettings, b: int, compute: str
) -> list[MemoryTerm]:
    keep = 1.0 - settings.sparsity
    layer, embedding = s.layer_params * b, s.embedding_params * b
    slicing = {
        "attention block": int(keep * s.attn_params * b) + s.hidden_size * s.attn_width * b,
        "MLP block": int(keep * s.mlp_params * b) + s.hidden_size * s.intermediate_size * b,
    }
    terms = [
        MemoryTerm(
            "fingerprint samples",
            _fingerprint_samples(s) * FINGERPRINT_BYTES_PER_SAMPLE,
            "host",
            "start",
            "≤2^18 values per tensor, bf16 + fp32 + sketch",
        )
    ]
    for phase, size in slicing.items():
        terms.append(MemoryTerm("slicing copies", size, compute, phase, "kept block + consumer"))
    if not settings.streamed:
        model = s.total_params * b
        if compute == "device":  # load_model reads the model on the host, then moves it
            terms.append(MemoryTerm("weights (loading)", model, "host", "start", "before .to()"))
        return [MemoryTerm("weights (whole model)", model, compute, ALWAYS, "load_model"), *terms]
    row_slices = 2 * min(settings.row_slice_bytes, s.largest_tensor * b)
    terms.append(
        MemoryTerm("fingerprint row slices", row_slices, compute, "start", "read, then cast")
    )
    terms.append(MemoryTerm("weights (embedding)", embedding, compute, "embedding", "+ rest"))
    for phase in ("attention block", "MLP block"):
        terms.append(MemoryTerm("weights (one layer)", layer, compute, phase, "from the shards"))
    shard = min(settings.max_shard_size, s.total_params * b)
    if s.head_params:
        head_slice = min(s.head_params * b, shard)
        terms.append(MemoryTerm("LM head row slices", 2 * head_slice, compute, "head", "untied"))
    buffer = shard + min(s.largest_tensor * b, shard)
    for phase in ("embedding", "attention block", "MLP block", "head"):
        terms.append(
            MemoryTerm("shard buffer", buffer, "host", phase, "one output shard + a tensor copy")
        )
    return terms


def _fingerprint_samples(s: ModelShapes) -> int:
    """Sampled values of the fingerprint: the embedding and each matrix of two layers."""
    h, i, q, kv = s.hidden_size, s.intermediate_size, s.attn_width, s.num_kv_heads * s.head_dim
    matrices = [h * q, h * kv, h * kv, q * h] + [h * i] * s.mlp_matrices
    per_layer = sum(min(m, FINGERPRINT_SAMPLES) for m in matrices)
    layers = 1 if s.num_layers == 1 else 2
    return min(s.embedding_params, FINGERPRINT_SAMPLES) + layers * per_layer


def _calibration_terms(
    s: ModelShapes, settings: MemorySettings, b: int, compute: str, profile: dict
) -> list[MemoryTerm]:
    tokens = settings.n_samples * settings.seqlen
    batch_tokens = settings.batch_size * settings.seqlen
    state = tokens * s.hidden_size * b
    # Offloaded (GPU only: on a CPU the host is the compute device) the states are host memory
    # and each batch visits the device for its block.
    states = "host" if settings.offload_activations and compute == "device" else compute
    terms = [
        MemoryTerm("calibration states (in)", state, states, ALWAYS, "N×T×hidden"),
        MemoryTerm("calibration states (out)", state, states, "attention block", "next inputs"),
        MemoryTerm("calibration states (out)", state, states, "MLP block", "next inputs"),
        MemoryTerm("layer kwargs", _kwargs_bytes(s, settings, b), compute, ALWAYS, "rotary, mask"),
    ]
    if states != compute:
        batch = 2 * batch_tokens * s.hidden_size * b
        for phase in ("attention block", "MLP block"):
            terms.append(MemoryTerm("one batch's states", batch, compute, phase, "in and out"))
    attn_targeted = "attn" in settings.targets
    if attn_targeted and profile["changes_blocks"]:
        kept = tokens * s.attn_width * b
        terms.append(
            MemoryTerm("o_proj inputs (replay)", kept, states, "attention block", "N×T×heads·hd")
        )
    widths = {"attention block": (s.attn_width, attn_targeted), "MLP block": None}
    widths["MLP block"] = (s.intermediate_size, "mlp" in settings.targets)
    for phase, (width, targeted) in widths.items():
        terms.append(
            MemoryTerm(
                "block activations",
                _activation_bytes(s, phase, batch_tokens, b),
                compute,
                phase,
                "one batch",
            )
        )
        if not (targeted and profile["restore"]):
            continue
        # FASP's cost pass (its default allocation) restores at up to 7/8 of the width.
        kept = round((1.0 - min(settings.sparsity, COST_CURVE_SPARSITY)) * width)
        terms.append(
            MemoryTerm("Gram matrix (fp32)", 4 * width * width, compute, phase, f"{width}²")
        )
        terms.append(
            MemoryTerm(
                "restoration solve",
                _restoration_bytes(s.hidden_size, width, kept, b),
                compute,
                phase,
                "fp32 Cholesky",
            )
        )
    return terms


def _kwargs_bytes(s: ModelShapes, settings: MemorySettings, b: int) -> int:
    kinds = s.attention_kinds  # Gemma 3: local and global rotary tables and masks
    rotary = kinds * 2 * settings.seqlen * s.head_dim * b if s.rotary else 0
    mask = kinds * settings.seqlen**2 * b if settings.attn_implementation == "eager" else 0
    return rotary + mask


def _activation_bytes(s: ModelShapes, phase: str, batch_tokens: int, b: int) -> int:
    if phase == "MLP block":
        gram_copy = batch_tokens * s.intermediate_size * 4 if b < 4 else 0
        return 4 * batch_tokens * s.intermediate_size * b + gram_copy
    qkv = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
    return 2 * batch_tokens * qkv * b


def _restoration_bytes(out: int, width: int, kept: int, b: int) -> int:
    """W·H, the kept system and its factor, the right-hand side, the solution and W[:, S], all
    fp32: restoration.py solves in fp32 wherever the damping bounds κ ≤ 1e4 (κ 100–3,700 on
    SmolLM2 at the default damping). Its fp64 fallback for ill-conditioned systems doubles the
    last five terms; the model does not size that rare case (sizing it put the streamed
    prediction 21–26 % above the measured peak)."""
    w_copy = 4 * out * width if b < 4 else 0
    return 4 * out * width + 8 * kept * kept + 12 * out * kept + 4 * out * kept + w_copy


def _depth_terms(
    s: ModelShapes, settings: MemorySettings, b: int, compute: str
) -> list[MemoryTerm]:
    if settings.streamed:
        return _streamed_depth_terms(s, settings, b, compute)
    tokens = settings.n_samples * settings.seqlen
    state = tokens * s.hidden_size * b
    logits = settings.batch_size * settings.seqlen * s.vocab_size * 4
    return [
        MemoryTerm("weights (whole model)", s.total_params * b, compute, ALWAYS, "load_model"),
        MemoryTerm("calibration states", 2 * state, compute, ALWAYS, "cached in and out"),
        MemoryTerm("logits (one batch, fp32)", logits, compute, "search", "LM head output"),
        MemoryTerm("layer kwargs", _kwargs_bytes(s, settings, b), compute, ALWAYS, "rotary, mask"),
    ]


def _streamed_depth_terms(
    s: ModelShapes, settings: MemorySettings, b: int, compute: str
) -> list[MemoryTerm]:
    """The layer-major depth search (engine/executor.py) at its smallest chunk, one window:
    the chunk grows into whatever a budget leaves (1 GiB of states without one), so this is
    what a budget must at least allow. Branches: one per candidate block, plus the trunk."""
    window = settings.seqlen * s.hidden_size * b
    branches = 2 * s.num_layers + 2
    head = s.vocab_size * s.hidden_size * (b + (4 if b < 4 else 0))  # + its fp32 copy
    logits = 3 * 128 * s.vocab_size * 4
    widest = max(s.hidden_size, s.intermediate_size, 4 * s.hidden_size)
    shard = min(settings.max_shard_size, s.total_params * b)
    return [
        MemoryTerm(
            "fingerprint samples",
            _fingerprint_samples(s) * FINGERPRINT_BYTES_PER_SAMPLE,
            "host",
            "start",
            "≤2^18 values per tensor",
        ),
        MemoryTerm("weights (one layer)", s.layer_params * b, compute, "search", "from the shards"),
        MemoryTerm("LM head (+ fp32 copy)", head, compute, "search", "once per chunk"),
        MemoryTerm("calibration states", branches * window, compute, "search", "≥ 1 window/branch"),
        MemoryTerm("activations", 16 * settings.seqlen * widest + logits, compute, "search", ""),
        MemoryTerm("layer kwargs", _kwargs_bytes(s, settings, b), compute, ALWAYS, "rotary, mask"),
        MemoryTerm("shard buffer", 2 * shard, "host", "export", "one output shard + a tensor"),
    ]
