"""Context parallelism: the sequence split over cp ranks, and the key/value all-gather of attention.

Split (the one the predictor and `ParallelPlan.validate` assume): every sequence is cut into 2·cp equal chunks and
cp rank r keeps chunks r and 2·cp−1−r, so that under a causal mask every rank does the same attention work
(load-balanced causal split, as Megatron-LM and torchtitan do it).

Attention: each rank computes attention for its own queries against the keys and values of the *whole*
sequence: K and V are all-gathered over the cp group (after RoPE, so they carry their global positions) and put
back into sequence order. No (S/cp × S) mask is built: each of the two local query chunks (global positions
[a, a+c)) attends to the gathered keys/values of positions [0, a+c) under a bottom-right-aligned causal mask
(`torch.nn.attention.bias.causal_lower_right(c, a + c)`), which SDPA dispatches to the flash or memory-efficient
kernel on CUDA (no mask tensor); the two outputs are concatenated in local order. This is exactly the causal mask
by global position (the reference the tests compare with builds that mask explicitly): query a+i may
see keys 0..a+i, i.e. the first a+i+1 of the a+c keys. It is the all-gather-KV scheme Llama 3
was trained with, chosen over ring attention because it is exact (one softmax over the same keys as a single
process, no online-softmax merging of partial results) and needs only all-gather and all-reduce, which gloo has
on every torch version we run (2.11 and 2.13). The backward of the gather is an all-reduce of the gathered
gradient followed by taking this rank's slice: gloo on CPU has no reduce-scatter of a flat tensor across the
versions we support, and the all-reduce is exact too (it moves about twice the bytes of a reduce-scatter).

Everything else is per token: RoPE / learned positions use the global positions of the local tokens, and the loss
is the mean over the local tokens; every cp rank holds the same number of tokens, so the mean over the cp (and dp)
ranks that FSDP's gradient reduction takes is the single-process mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def chunk_ids(cp: int, cp_rank: int) -> tuple[int, int]:
    """The two of the 2·cp sequence chunks cp rank `cp_rank` holds."""
    if not 0 <= cp_rank < cp:
        raise ValueError(f"cp rank {cp_rank} out of range for cp = {cp}")
    return cp_rank, 2 * cp - 1 - cp_rank


def local_positions(seq_len: int, cp: int, cp_rank: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Global positions (0..seq_len-1) of the seq_len / cp tokens rank `cp_rank` holds, in local order."""
    if seq_len % (2 * cp):
        raise ValueError(f"seq_len {seq_len} is not divisible by 2 × cp = {2 * cp}")
    chunk = seq_len // (2 * cp)
    first, second = chunk_ids(cp, cp_rank)
    return torch.cat([torch.arange(first * chunk, (first + 1) * chunk, device=device),
                      torch.arange(second * chunk, (second + 1) * chunk, device=device)])


def split_sequence(tensor: torch.Tensor, cp: int, cp_rank: int, dim: int = 1) -> torch.Tensor:
    """This rank's share of a full-sequence tensor (its two chunks, concatenated along `dim`)."""
    if cp == 1:
        return tensor
    chunks = tensor.chunk(2 * cp, dim=dim)
    if len(chunks) != 2 * cp or chunks[0].shape[dim] * 2 * cp != tensor.shape[dim]:
        raise ValueError(f"a sequence of {tensor.shape[dim]} does not split into {2 * cp} equal chunks")
    first, second = chunk_ids(cp, cp_rank)
    return torch.cat([chunks[first], chunks[second]], dim=dim).contiguous()


def gathered_order(local_len: int, cp: int) -> torch.Tensor:
    """Index that puts the rank-major concatenation of every rank's local tokens back in sequence order."""
    seq_len = local_len * cp
    positions = torch.cat([local_positions(seq_len, cp, r) for r in range(cp)])
    return torch.argsort(positions)


def _flash_cannot_take_gqa(q_BHSD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor) -> bool:
    """True on CUDA when SDPA's flash kernel cannot run these GQA inputs (so CausalBias would build a mask)."""
    if q_BHSD.device.type != "cuda":
        return False  # CPU (and meta): the math / CPU kernels run with the mask either way
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    return not can_use_flash_attention(SDPAParams(q_BHSD, k_BHSD, v_BHSD, None, 0.0, True, True))


def chunked_causal_attention(q_BHSD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor,
                             cp: int, cp_rank: int) -> torch.Tensor:
    """Causal attention of cp rank `cp_rank`'s local queries against the keys/values of the whole sequence.

    q_BHSD: (B, H, S/cp, D), this rank's two chunks in local order; k_BHSD, v_BHSD: (B, Hkv, S, D) in sequence
    order (Hkv may divide H: grouped-query attention). Returns (B, H, S/cp, D) in local order. Query chunk
    [a, a+c) attends to keys [0, a+c) with a bottom-right-aligned causal mask, so no (S/cp × S) mask exists.
    """
    local_len = q_BHSD.shape[2]
    if local_len % 2 or local_len * cp != k_BHSD.shape[2]:
        raise ValueError(f"{local_len} local queries are not two equal chunks of a {k_BHSD.shape[2]}-token "
                         f"sequence split over cp = {cp}")
    chunk = local_len // 2
    # CausalBias takes enable_gqa and hands it on (torch 2.13 source; an older torch's bias.py has the same
    # signature). The flash kernel reads each kv head for its query group. The memory-efficient kernel takes no GQA
    # (sdp_utils.cpp), so where flash cannot run on CUDA (fp32, large head dim) CausalBias would materialise the
    # (c × (a+c)) mask and run the math kernel: repeat the kv heads for those calls instead.
    gqa = q_BHSD.shape[1] != k_BHSD.shape[1]
    if gqa and _flash_cannot_take_gqa(q_BHSD, k_BHSD, v_BHSD):
        group = q_BHSD.shape[1] // k_BHSD.shape[1]
        k_BHSD, v_BHSD = k_BHSD.repeat_interleave(group, dim=1), v_BHSD.repeat_interleave(group, dim=1)
        gqa = False
    outs = []
    for i, chunk_id in enumerate(chunk_ids(cp, cp_rank)):
        end = (chunk_id + 1) * chunk  # keys of positions [0, end) exist for this query chunk; the last c are its own
        outs.append(F.scaled_dot_product_attention(
            q_BHSD[:, :, i * chunk: (i + 1) * chunk], k_BHSD[:, :, :end], v_BHSD[:, :, :end],
            attn_mask=causal_lower_right(chunk, end), enable_gqa=gqa))
    return torch.cat(outs, dim=2)


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 1 over a process group; backward: all-reduce the gradient, keep this rank's slice."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, group: dist.ProcessGroup, size: int, rank: int) -> torch.Tensor:
        ctx.group, ctx.size, ctx.rank, ctx.local_len = group, size, rank, local.shape[1]
        if local.is_meta:  # shape inference of pipeline stages runs forward on meta tensors: shapes only
            return torch.cat([local] * size, dim=1)
        local = local.contiguous()
        pieces = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(pieces, local, group=group)
        return torch.cat(pieces, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        start = ctx.rank * ctx.local_len
        if grad.is_meta:
            return grad[:, start: start + ctx.local_len], None, None, None
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[:, start: start + ctx.local_len].contiguous(), None, None, None


@dataclass
class ContextParallel:
    """One rank's view of its cp group; attached to the model's attention modules by `parallelize`."""

    group: dist.ProcessGroup | None
    size: int
    rank: int
    _cache: dict = field(default_factory=dict, repr=False)

    def positions(self, local_len: int, device: torch.device) -> torch.Tensor:
        """Global positions of this rank's `local_len` tokens."""
        key = ("positions", local_len, str(device))
        if key not in self._cache:
            self._cache[key] = local_positions(local_len * self.size, self.size, self.rank, device)
        return self._cache[key]

    def gather_sequence(self, local_BSX: torch.Tensor) -> torch.Tensor:
        """(B, S/cp, ...) local keys or values -> (B, S, ...) of the whole sequence, in sequence order."""
        local_len = local_BSX.shape[1]
        gathered = _GatherSequence.apply(local_BSX, self.group, self.size, self.rank)
        key = ("order", local_len, str(local_BSX.device))
        if key not in self._cache:
            self._cache[key] = gathered_order(local_len, self.size).to(local_BSX.device)
        return gathered.index_select(1, self._cache[key])

    def attention(self, q_BHSD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor) -> torch.Tensor:
        """Causal attention of the local queries against the gathered keys/values (`chunked_causal_attention`)."""
        return chunked_causal_attention(q_BHSD, k_BHSD, v_BHSD, self.size, self.rank)
