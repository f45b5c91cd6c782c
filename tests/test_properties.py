"""Property-based tests (hypothesis): shapes and round trips of the tokenizer and the sampler
for random scale schedules, batch sizes and image counts, on small random models.

Deterministic (``derandomize=True``: the same examples every run) and quick (few examples,
tiny models). Each example builds its own models under a seeded ``torch.random.fork_rng``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hart_edu.ar_transformer import HARTTransformer
from hart_edu.hybrid_tokenizer import HybridTokenizer, TokenizerConfig
from hart_edu.vq import MultiScaleResidualQuantizer

FAST = settings(max_examples=8, deadline=None, derandomize=True, database=None)

# increasing scale sizes that start at 1 (as every VAR/HART schedule does), 2 to 4 scales
patch_schedules = st.lists(st.integers(2, 6), min_size=1, max_size=3, unique=True).map(
    lambda rest: (1, *sorted(rest)))


def small_tokenizer(patch_nums: tuple[int, ...], seed: int = 0, ch_mult=(1, 2)) -> HybridTokenizer:
    config = TokenizerConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=ch_mult, v_patch_nums=patch_nums,
                             quantizer_type="var_hybrid", hybrid=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return HybridTokenizer(config).eval()


# ------------------------------------------------------------------------------------ tokenizer


@FAST
@given(patch_nums=patch_schedules, B=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_quantizer_round_trip_and_residual_identity(patch_nums, B, seed):
    q = MultiScaleResidualQuantizer(16, 4, patch_nums, hybrid=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(16, 4, generator=g))
    f_BChw = torch.randn(B, 4, patch_nums[-1], patch_nums[-1], generator=g)
    codes = q.encode(f_BChw)
    assert [tuple(i.shape) for i in codes.idx_Bl] == [(B, p * p) for p in patch_nums]
    assert all(int(i.min()) >= 0 and int(i.max()) < 16 for i in codes.idx_Bl)
    # the indices alone rebuild the discrete latent, and discrete + residual is f again
    torch.testing.assert_close(q.indices_to_fhat(codes.idx_Bl), codes.fhat_discrete_BChw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codes.fhat_discrete_BChw + codes.residual_BChw, f_BChw, atol=1e-5, rtol=1e-5)


@FAST
@given(patch_nums=patch_schedules, B=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_tokenizer_encode_indices_to_fhat_and_decode_shapes(patch_nums, B, seed):
    tok = small_tokenizer(patch_nums, seed % 3)
    size = tok.config.image_size
    img_B3HW = torch.rand(B, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    enc = tok.encode(img_B3HW)
    assert [tuple(i.shape) for i in enc.idx_Bl] == [(B, p * p) for p in patch_nums]
    assert enc.f_BChw.shape == (B, 4, patch_nums[-1], patch_nums[-1])
    torch.testing.assert_close(tok.indices_to_fhat(enc.idx_Bl), enc.fhat_discrete_BChw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.fhat_full_BChw, enc.f_BChw, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        out_B3HW = tok.decode(enc.fhat_full_BChw)
    assert out_B3HW.shape == img_B3HW.shape and float(out_B3HW.abs().max()) <= 1.0


@FAST
@given(h=st.integers(2, 6), w=st.integers(2, 6), levels=st.integers(1, 3), B=st.integers(1, 2))
def test_decode_maps_any_latent_to_downsample_times_its_size(h, w, levels, B):
    """(A 1x1 latent has one value per GroupNorm group, which GroupNorm refuses.)"""
    tok = small_tokenizer((1, 2), ch_mult=(1,) * levels)
    d = tok.config.downsample
    with torch.no_grad():
        img = tok.decode(torch.randn(B, 4, h, w, generator=torch.Generator().manual_seed(h * 7 + w)))
    assert d == 2 ** (levels - 1) and img.shape == (B, 3, h * d, w * d)


# -------------------------------------------------------------------------------------- sampler


def small_pipeline(patch_nums: tuple[int, ...], T: int = 6, context_dim: int = 16):
    """A HARTPipeline of random tiny models: a 1-layer BERT text encoder over a word-level
    vocabulary ("w0".."w29"), a depth-1 HART transformer and the tokenizer above."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from hart_edu.sampler import HARTPipeline
    from hart_edu.text_encoder import TextEncoder
    from hart_edu.train.transformer import TrainSettings, init_weights, tiny_config

    vocab = {f"w{i}": i for i in range(30)} | {"<unk>": 30, "<pad>": 31}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    tok = small_tokenizer(patch_nums)
    s = TrainSettings(embed_dim=32, depth=1, num_heads=2, context_token=T, diff_width=16, diff_depth=1,
                      num_sampling_steps="2")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        text_model = BertModel(BertConfig(vocab_size=32, hidden_size=context_dim, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=32, pad_token_id=31)).eval()
        model = HARTTransformer(tiny_config(s, context_dim, patch_nums), vocab_size=16, vae_channels=4)
        init_weights(model)
    encoder = TextEncoder(text_model, words, max_length=T, system_prompt=None)
    return HARTPipeline(encoder, model.eval(), tok)


@settings(max_examples=6, deadline=None, derandomize=True, database=None)
@given(patch_nums=patch_schedules, B=st.integers(1, 3), n=st.integers(1, 2), residual=st.booleans(),
       more_smooth=st.booleans())
def test_pipeline_shapes_for_any_schedule_batch_and_image_count(patch_nums, B, n, residual, more_smooth):
    pipe = small_pipeline(patch_nums)
    prompts = [" ".join(f"w{(b * 7 + j) % 30}" for j in range(b + 1)) for b in range(B)]
    out = pipe(prompts, num_images_per_prompt=n, residual=residual, more_smooth=more_smooth, seed=3,
               progress=False, cfg=2.0)
    N, p, size = B * n, patch_nums[-1], pipe.tokenizer.config.image_size
    assert [tuple(i.shape) for i in out.indices] == [(N, q * q) for q in patch_nums]
    assert [m.shape[1:] for m in out.index_maps()] == [(q, q) for q in patch_nums]
    assert out.image_B3HW.shape == (N, 3, size, size) and len(out.images) == N
    assert all(im.size == (size, size) for im in out.images)
    assert out.prompts == [prompt for prompt in prompts for _ in range(n)]
    assert out.f_hat_BChw.shape == out.f_discrete_BChw.shape == (N, 4, p, p)
    assert (out.residual_BChw is not None) == residual
    if residual:
        assert out.residual_BChw.shape == (N, 4, p, p)
    else:
        assert torch.equal(out.f_hat_BChw, out.f_discrete_BChw)
    assert float(out.image_B3HW.min()) >= 0.0 and float(out.image_B3HW.max()) <= 1.0


@pytest.mark.parametrize("n", [1, 3])
def test_pipeline_same_seed_same_images_for_a_random_model(n):
    pipe = small_pipeline((1, 2, 3))
    a = pipe(["w1 w2", "w3"], num_images_per_prompt=n, seed=9, progress=False)
    b = pipe(["w1 w2", "w3"], num_images_per_prompt=n, seed=9, progress=False)
    assert torch.equal(a.image_B3HW, b.image_B3HW)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
