import copy
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from autocompress.errors import UserError
from autocompress.export import load_compressed, save_compressed
from autocompress.export.entropy import CODERS, decode, encode, size_coded_mb
from autocompress.export.packing import pack_bits
from autocompress.loading import load_model
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies import apply_plan

B = "encoder.layer"


def _codes(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pack_bits(torch.randn(n, generator=g).mul(2).round().clamp(-7, 7).to(torch.int32) + 7, 4)


@pytest.mark.parametrize("coder", list(CODERS))
def test_encode_decode_is_exact_and_codes_only_integer_streams(coder):
    noise = torch.randint(0, 256, (512,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    tensors = {"a.weight.qweight": _codes(), "a.weight.scales": torch.ones(8, 2, dtype=torch.float16),
               "b.weight.mask": torch.zeros(4096, dtype=torch.uint8), "c.weight.qweight": noise}
    coded, meta = encode(tensors, coder)
    assert set(meta) == {"a.weight.qweight", "b.weight.mask"}  # the noise does not get smaller: kept raw
    assert "a.weight.qweight" not in coded
    assert coded["a.weight.qweight.coded"].numel() < tensors["a.weight.qweight"].numel()
    assert coded["a.weight.scales"] is tensors["a.weight.scales"] and coded["c.weight.qweight"] is noise
    back = decode(coded, json.loads(json.dumps(meta)), "x")
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert all(back[k].dtype == tensors[k].dtype and back[k].shape == tensors[k].shape for k in tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_floating_point_tensors_are_coded_by_byte_planes_bit_exactly(dtype):
    w = (torch.randn(96, 128, generator=torch.Generator().manual_seed(2)) * 0.05).to(dtype)
    w[0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 0.0])
    coded, meta = encode({"d.weight": w, "d.bias": torch.zeros(96, dtype=dtype)}, "zstd")
    assert meta["d.weight"]["planes"] and "d.bias" not in meta  # below FLOAT_MIN values: left as it is
    assert coded["d.weight.coded"].numel() < w.numel() * w.element_size()  # the exponent plane shrinks
    back = decode(coded, meta, "x")["d.weight"]
    assert back.dtype == dtype and back.view(torch.int16 if dtype != torch.float32 else torch.int32).equal(
        w.view(torch.int16 if dtype != torch.float32 else torch.int32))


def test_a_corrupt_or_missing_stream_names_the_tensor():
    coded, meta = encode({"a.weight.qweight": _codes()}, "zlib")
    with pytest.raises(UserError, match="export 'x': the entropy-coded tensor 'a.weight.qweight' is missing"):
        decode({}, meta, "x")
    flipped = coded["a.weight.qweight.coded"].clone()
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(UserError, match="'a.weight.qweight' (does not decode|decodes to .* CRC-32)"):
        decode({"a.weight.qweight.coded": flipped}, meta, "x")


@pytest.fixture(scope="module")
def coded_export(tmp_path_factory):
    lm = load_model("random:bert")
    plan = CompressionPlan({f"{B}.0.attention.self.query": LayerPlan(bits=4, group_size=32),
                            f"{B}.0.intermediate.dense": LayerPlan(bits=4, quant_method="kmeans", sparsity=0.5),
                            f"{B}.0.output.dense": LayerPlan(bits=3, group_size=None, symmetric=False),
                            f"{B}.1.output.dense": LayerPlan(pattern="2:4"),
                            "embeddings.word_embeddings": LayerPlan(bits=4, group_size=32)})
    model = apply_plan(copy.deepcopy(lm.model), plan, None, info=lm.info)
    path = str(tmp_path_factory.mktemp("zstd"))
    return lm, plan, model, path, save_compressed(model, plan, lm.info, path, entropy="zstd")


def test_coded_export_reloads_bit_identically(coded_export):
    lm, plan, model, path, report = coded_export
    assert report.tensor_bytes == report.predicted_bytes  # size_mb stays the uncoded packed size
    stored = load_file(os.path.join(path, "model.safetensors"))
    assert report.coded_bytes == sum(t.numel() * t.element_size() for t in stored.values()) < report.tensor_bytes
    with open(os.path.join(path, "export.json")) as fh:
        info = json.load(fh)
    assert info["entropy"] == "zstd" and info["coded_bytes"] == report.coded_bytes
    assert size_coded_mb(model, plan, lm.info, "zstd") == info["size_coded_mb"] == report.coded_bytes / 1e6
    back = load_compressed(path).model.state_dict()
    for key, t in model.state_dict().items():
        assert torch.equal(back[key], t), key
        assert back[key].view(torch.uint8).equal(t.view(torch.uint8)) if t.is_floating_point() else True


def test_a_corrupted_coded_export_is_refused_naming_the_tensor(coded_export, tmp_path):
    _, _, _, path, _ = coded_export
    file = os.path.join(path, "model.safetensors")
    with safe_open(file, framework="pt") as fh:
        header = fh.metadata()
    tensors = load_file(file)
    key = "encoder.layer.0.intermediate.dense.weight.qweight.coded"
    tensors[key] = tensors[key].clone()
    tensors[key][10:20] ^= 0x5A
    for name in os.listdir(path):
        if name != "model.safetensors":
            with open(os.path.join(path, name), "rb") as src, open(tmp_path / name, "wb") as dst:
                dst.write(src.read())
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=header)
    with pytest.raises(UserError, match="'encoder.layer.0.intermediate.dense.weight.qweight'"):
        load_compressed(str(tmp_path))


def test_an_unknown_coder_is_refused_before_writing(tmp_path):
    lm = load_model("random:bert")
    with pytest.raises(UserError, match="entropy='brotli' is unknown; use one of zstd, lzma, zlib"):
        save_compressed(lm.model, CompressionPlan({}), lm.info, str(tmp_path / "out"), entropy="brotli")
    assert not (tmp_path / "out").exists()
