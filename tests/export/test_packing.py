import pytest
import torch

from autocompress.export.packing import (
    index_bits, pack_bits, pack_mask, pack_nm_index, packed_len, unpack_bits, unpack_mask, unpack_nm_index,
)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 2, 7, 9, 15, 1001, 4096])
def test_round_trip_any_width_and_length(bits, n):
    g = torch.Generator().manual_seed(bits * 10_000 + n)
    for _ in range(3):
        v = torch.randint(0, 2 ** bits, (n,), generator=g)
        p = pack_bits(v, bits)
        assert p.dtype == torch.uint8 and p.numel() == packed_len(n, bits) == -(-n * bits // 8)
        assert torch.equal(unpack_bits(p, bits, n), v.to(torch.int32))


@pytest.mark.parametrize("bits", range(1, 9))
def test_stream_is_little_endian_and_matches_a_reference(bits):
    g = torch.Generator().manual_seed(bits)
    v = torch.randint(0, 2 ** bits, (37,), generator=g).tolist()
    stream = sum(x << (i * bits) for i, x in enumerate(v))  # value i at bits [i*b, (i+1)*b)
    ref = [(stream >> (8 * k)) & 0xFF for k in range(packed_len(37, bits))]
    assert pack_bits(torch.tensor(v), bits).tolist() == ref


def test_known_bytes():
    assert pack_bits(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]
    assert pack_bits(torch.tensor([1, 2]), 3).tolist() == [0b010_001]
    assert pack_bits(torch.tensor([255, 0, 7]), 8).tolist() == [255, 0, 7]
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1]), 1).tolist() == [1, 1]


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="0..15"):
        pack_bits(torch.tensor([16]), 4)
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([-1]), 3)
    with pytest.raises(ValueError, match="1..8"):
        pack_bits(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 8)  # 8 values of 4 bits are 4 bytes


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 33), (64, 64)])
def test_mask_round_trip(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(shape[1])) < 0.4
    p = pack_mask(mask)
    assert p.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack_mask(p, shape), mask)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 2), (4, 8), (3, 8), (1, 3), (5, 16)])
def test_nm_index_round_trip(n, m):
    rows, groups = 7, 5
    g = torch.Generator().manual_seed(n * 100 + m)
    keep = torch.rand(rows * groups, m, generator=g).argsort(1)[:, :n]
    mask = torch.zeros(rows * groups, m, dtype=torch.bool).scatter_(1, keep, True).reshape(rows, groups * m)
    p = pack_nm_index(mask, n, m)
    assert index_bits(m) == (m - 1).bit_length() and p.numel() == -(-rows * groups * n * index_bits(m) // 8)
    assert torch.equal(unpack_nm_index(p, n, m, rows, groups * m), mask)


def test_nm_index_refuses_wrong_counts():
    mask = torch.tensor([[True, True, True, False]])
    with pytest.raises(ValueError, match="exactly 2"):
        pack_nm_index(mask, 2, 4)
    with pytest.raises(ValueError, match="repeats"):
        unpack_nm_index(pack_bits(torch.tensor([1, 1]), 2), 2, 4, 1, 4)
