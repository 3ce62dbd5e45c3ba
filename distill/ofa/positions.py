"""Position tables of OFA: relative-position bucket indices and image position ids.

All of these are fixed functions of the config. They are stored as int64 buffers because OFA-Sys checkpoints
hold them, but they can always be recomputed (a checkpoint without them still loads correctly).
"""
import math
from functools import lru_cache

import torch

# OFA builds the text bucket table for this many positions whatever `max_position_embeddings` says.
TOKEN_BUCKET_POSITIONS = 1024
# Decoder image-code positions are padded with this id for the text part of a mixed sequence.
CODE_PADDING_POSITIONS = 768


def token_bucket_position(bucket_size: int, max_position: int = TOKEN_BUCKET_POSITIONS) -> torch.Tensor:
    """Log-bucketed relative positions for text, (max_position, max_position) int64, entry [query, key].

    Offsets with |offset| <= bucket_size // 2 keep their own bucket; longer offsets share log-spaced buckets.
    Values lie in [0, 2 * bucket_size - 2] (the row count of the token relative-position table).
    Returned on the default device (e.g. `meta` inside `with torch.device("meta")`).
    """
    return _token_bucket_position_cpu(bucket_size, max_position).to(torch.get_default_device(), copy=True)


@lru_cache(maxsize=8)
def _token_bucket_position_cpu(bucket_size: int, max_position: int) -> torch.Tensor:
    # A million log()s take ~0.5 s on a busy CPU, and every model builds this table 2-4 times: compute it once.
    query = torch.arange(max_position, dtype=torch.long, device="cpu")[:, None]
    key = torch.arange(max_position, dtype=torch.long, device="cpu")[None, :]
    relative = query - key
    sign = torch.sign(relative)
    mid = bucket_size // 2
    # Small offsets get a dummy magnitude (mid - 1) so that the log below stays finite; they are not used.
    magnitude = torch.where((relative < mid) & (relative > -mid), mid - 1, relative.abs())
    # Same float32 operation order as OFA so that the ceil boundaries land on the same integers.
    log_bucket = torch.ceil(torch.log(magnitude / mid) / math.log((max_position - 1) / mid) * (mid - 1)) + mid
    bucket = torch.where(magnitude.le(mid), relative, log_bucket.int() * sign).long()
    return bucket + bucket_size - 1


def image_bucket_position(bucket_size: int) -> torch.Tensor:
    """Swin-style 2-D relative positions, (bucket_size**2 + 1, bucket_size**2 + 1) int64.

    Row/column 0 is a reserved "no patch" slot with its own three table entries; entry [1 + i, 1 + j] encodes the
    (row, col) offset between patch i and patch j of a bucket_size x bucket_size grid (row-major).
    """
    num_relative = (2 * bucket_size - 1) ** 2 + 3
    rows, cols = torch.meshgrid(torch.arange(bucket_size), torch.arange(bucket_size), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, b*b)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (bucket_size - 1)
    index = torch.zeros((bucket_size * bucket_size + 1,) * 2, dtype=torch.long)
    index[1:, 1:] = relative[:, :, 0] * (2 * bucket_size - 1) + relative[:, :, 1]
    index[0, 0:] = num_relative - 3
    index[0:, 0] = num_relative - 2
    index[0, 0] = num_relative - 1
    return index


def image_position_ids(height: int, width: int, bucket_size: int, device=None) -> torch.Tensor:
    """Position ids of a height x width patch grid, flattened row-major: row * bucket_size + col + 1. Shape (h*w,)."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return (rows * bucket_size + cols + 1).flatten()


def code_position_ids(code_image_size: int, bucket_size: int) -> torch.Tensor:
    """OFA decoder's `image_position_idx` buffer: [0] + the (code_image_size // 8)^2 grid + 768 x 1024.

    Only used when the decoder generates image codes; kept because checkpoints hold it.
    """
    window = code_image_size // 8
    grid = image_position_ids(window, window, bucket_size)
    return torch.cat([torch.zeros(1, dtype=torch.long), grid, torch.full((CODE_PADDING_POSITIONS,), 1024)])
