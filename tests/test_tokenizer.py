"""The hybrid tokenizer and VQ: golden parity, the math, round trips and clear errors."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from hart_edu.checkpoint import CheckpointError
from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
from hart_edu.parity import run_parity
from hart_edu.vq import (
    MultiScaleResidualQuantizer,
    codebook_usage,
    phi_index,
    straight_through,
)

SMALL = TokenizerConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 2), v_patch_nums=(1, 2, 4),
                        quantizer_type="var_hybrid", hybrid=True)


def small_tokenizer(seed: int = 0) -> HybridTokenizer:
    torch.manual_seed(seed)  # tests only: the library itself never touches the global RNG
    return HybridTokenizer(SMALL).eval()


# -- golden parity ------------------------------------------------------------------------------


def test_every_tok_tensor_matches_golden(golden_dir):
    checks, errors = run_parity(golden_dir, [("tokenizer", "hart_edu.parity.tokenizer:produce")])
    assert errors == []
    tok = [c for c in checks if c.name.startswith("tok.")]
    assert len(tok) > 0
    bad = [(c.name, c.status, c.error) for c in tok if not c.ok]
    assert bad == [], bad
    assert sum(c.status == "match" for c in tok) >= len(tok) - 3  # only fixture inputs are not compared


def test_manifest_tokenizer_part(golden_dir):
    from hart_edu.parity.manifest import check_tokenizer

    manifest = json.loads((golden_dir / "manifest-hart-0.7b-1024px.json").read_text())
    result = check_tokenizer(manifest["tokenizer"])
    assert result.ok, result
    assert result.params_ours == 108_948_355


# -- the VQ math -----------------------------------------------------------------------------


def test_straight_through_value_and_gradient():
    z = torch.randn(3, 4, requires_grad=True)
    z_q = torch.zeros(3, 4)
    out = straight_through(z, z_q)
    assert torch.equal(out, z_q)
    out.sum().backward()
    assert torch.equal(z.grad, torch.ones(3, 4))


def test_codebook_usage():
    full = codebook_usage(torch.arange(8), 8)
    assert full.fraction_used == 1.0 and abs(full.perplexity - 8) < 1e-9
    collapsed = codebook_usage(torch.zeros(10, dtype=torch.long), 8)
    assert collapsed.fraction_used == 1 / 8 and abs(collapsed.perplexity - 1) < 1e-9


def test_phi_mapping_for_the_released_14_scales():
    released = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)
    assert [phi_index(si, len(released), 4) for si in range(14)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert [phi_index(si, 6, 4) for si in range(6)] == [0, 0, 1, 2, 3, 3]


def test_residual_quantization_rebuilds_f_scale_by_scale():
    torch.manual_seed(0)
    q = MultiScaleResidualQuantizer(256, 4, (1, 2, 4, 8), quant_resi=0.0)
    f_BChw = torch.randn(2, 4, 8, 8)
    codes = q.encode(f_BChw)
    # hybrid: discrete + continuous residual is exactly f
    torch.testing.assert_close(codes.fhat_discrete_BChw + codes.residual_BChw, f_BChw)
    with torch.no_grad():
        fhats = q.running_fhat(codes.idx_Bl)  # f_hat after each scale, as inference composes it
        assert all(torch.equal(a, b) for a, b in zip(q.running_fhat(codes.idx_Bl[:2]), fhats[:2]))
    assert len(fhats) == 4
    torch.testing.assert_close(fhats[-1], codes.fhat_discrete_BChw)
    torch.testing.assert_close(codes.rest_before_last_BChw, f_BChw - fhats[-2])
    errors = [float((f_BChw - fhat_BChw).pow(2).mean()) for fhat_BChw in fhats]
    assert errors[-1] < 0.5 * float(f_BChw.pow(2).mean())
    with pytest.raises(ValueError, match="expected 1 to 4 index maps"):
        q.running_fhat([])


def test_teacher_forcing_inputs_match_inference_steps():
    tok = small_tokenizer()
    q = tok.quantizer
    g = torch.Generator().manual_seed(1)
    idx_Bl = [torch.randint(0, 16, (2, p * p), generator=g) for p in SMALL.v_patch_nums]
    x_BLC = q.teacher_forcing_inputs(idx_Bl)
    assert x_BLC.shape == (2, 4 + 16, 4)
    fhat = torch.zeros(2, 4, 4, 4)
    step0 = q.next_autoregressive_input(0, fhat, q.embed(idx_Bl[0]))
    torch.testing.assert_close(x_BLC[:, :4], step0.next_BChw.flatten(2).transpose(1, 2))


# -- the tokenizer --------------------------------------------------------------------------


def test_shapes_and_hybrid_is_exact():
    tok = small_tokenizer()
    img = torch.rand(2, 3, 8, 8) * 2 - 1
    enc = tok.encode(img)
    assert [i.shape for i in enc.idx_Bl] == [(2, 1), (2, 4), (2, 16)]
    assert all(i.dtype == torch.int64 for i in enc.idx_Bl)
    torch.testing.assert_close(enc.fhat_full_BChw, enc.f_BChw, atol=1e-5, rtol=0)
    torch.testing.assert_close(tok.indices_to_fhat(enc.idx_Bl), enc.fhat_discrete_BChw)
    rec = tok.reconstruct(img, residual=True)
    assert rec.shape == img.shape and rec.min() >= -1 and rec.max() <= 1


def test_save_and_load_round_trip(tmp_path):
    tok = small_tokenizer()
    tok.save_pretrained(tmp_path / "tokenizer")
    cfg = json.loads((tmp_path / "tokenizer" / "config.json").read_text())
    assert cfg["model_type"] == "hart_autoencoder_with_disc"
    again = HybridTokenizer.from_pretrained(tmp_path / "tokenizer")
    img = torch.rand(1, 3, 8, 8) * 2 - 1
    assert torch.equal(tok.reconstruct(img), again.reconstruct(img))


def test_disc_keys_are_ignored_with_a_log_record_not_a_print(tmp_path, capsys, caplog):
    tok = small_tokenizer()
    state = dict(tok.official_state_dict())
    state["disc.layer.weight"] = torch.zeros(3)
    folder = tmp_path / "tok"
    tok.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with caplog.at_level("INFO", logger="hart_edu.hybrid_tokenizer"):
        loaded = HybridTokenizer.from_pretrained(folder)
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring 1 training-only discriminator keys (disc.*) in pytorch_model.bin"]
    assert capsys.readouterr() == ("", "")  # the library prints nothing
    assert torch.equal(loaded.post_quant_conv.weight, tok.post_quant_conv.weight)


# -- clear errors -----------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "tokenizer"
    small_tokenizer().save_pretrained(folder)
    return folder


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_error_unsupported_config_value(saved):
    _edit_config(saved, quantizer_type="fsq")
    with pytest.raises(CheckpointError, match="quantizer_type 'fsq'"):
        HybridTokenizer.from_pretrained(saved)


def test_error_unknown_config_key(saved):
    _edit_config(saved, use_magic=True)
    with pytest.raises(CheckpointError, match="use_magic"):
        HybridTokenizer.from_pretrained(saved)


def test_error_other_model_type(saved):
    _edit_config(saved, model_type="hart_transformer_t2i")
    with pytest.raises(CheckpointError, match="model_type"):
        HybridTokenizer.from_pretrained(saved)


def test_error_missing_weights_and_folder(saved, tmp_path):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weight file"):
        HybridTokenizer.from_pretrained(saved)
    with pytest.raises(CheckpointError, match="not found"):
        HybridTokenizer.from_pretrained(tmp_path / "nowhere")


def test_error_wrong_shape_missing_and_extra_keys_are_named(saved):
    from safetensors.torch import load_file, save_file

    state = load_file(str(saved / "model.safetensors"))
    state["vae.quant_conv.weight"] = torch.zeros(1, 1, 1, 1)
    del state["vae.post_quant_conv.bias"]
    state["vae.surprise"] = torch.zeros(1)
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        HybridTokenizer.from_pretrained(saved)
    msg = str(err.value)
    assert "vae.quant_conv.weight" in msg and "vae.post_quant_conv.bias" in msg and "vae.surprise" in msg


def test_error_truncated_checkpoint(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        HybridTokenizer.from_pretrained(saved)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_pickle_that_runs_code_is_refused(saved):
    (saved / "model.safetensors").unlink()
    with open(saved / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"vae.x": _RunsCode()}, fh)
    with pytest.raises(CheckpointError, match="pytorch_model.bin is not a plain tensor file and will not be loaded"):
        HybridTokenizer.from_pretrained(saved)


def test_error_bad_image_sizes():
    tok = small_tokenizer()
    with pytest.raises(ValueError, match="not divisible"):
        tok.encode(torch.zeros(1, 3, 9, 9))
    with pytest.raises(ValueError, match="takes 8x8"):
        tok.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tok.encode(torch.zeros(3, 8, 8))


def test_golden_folder_loads_with_its_bin(golden_dir, tmp_path):
    folder = tmp_path / "tokenizer"
    shutil.copytree(golden_dir / "tiny-official" / "tokenizer", folder)
    tok = HybridTokenizer.from_pretrained(folder)
    assert tok.config.v_patch_nums == (1, 2, 3, 4, 6, 8) and tok.config.is_hybrid


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("c_in,c_out", [(32, 32), (32, 64)])
def test_resnet_block_in_place_steps_equal_the_plain_formula_forward_and_backward(c_in, c_out, autocast):
    """ResnetBlock saves memory with in-place SiLU and an in-place residual add: the same numbers
    as x + conv2(SiLU(GN(conv1(SiLU(GN(x)))))) written out of place, the same dtype, and the same
    gradients for the input and every parameter; also under bfloat16 autocast with a float32
    input (where the shortcut and conv2's output differ in dtype and + must promote)."""
    import contextlib

    import torch.nn.functional as F

    from hart_edu.hybrid_tokenizer import ResnetBlock

    g = torch.Generator().manual_seed(0)
    block = ResnetBlock(c_in, c_out, dropout=0.0)
    with torch.no_grad():
        for p in block.parameters():  # any weights do: drawn from our generator
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    x = torch.randn(2, c_in, 8, 8, generator=g, requires_grad=True)

    def plain(x_BChw):
        h = block.conv1(F.silu(block.norm1(x_BChw)))
        h = block.conv2(F.silu(block.norm2(h)))
        return block.nin_shortcut(x_BChw) + h

    def run(fn):
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            out = fn(x)
        grads = torch.autograd.grad(out.float().square().sum(), [x, *block.parameters()])
        return out, grads

    (out, grads), (ref, ref_grads) = run(block), run(plain)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
