"""``predict_video``: K expressions of one video give the masks of ``predict_expression`` called once each, and of
the model's plain streaming API (``start_video`` / ``track``: one expression, no sharing, no context cache)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import pytest
import torch
from helpers.tiny import make_tiny_model, random_clip

from mpgsam2.inference import (
    ExpressionPrediction,
    chunk_bounds,
    predict_expression,
    predict_video,
    resize_logits,
)
from mpgsam2.modeling.mpgsam2 import MPGSAM2, PostNormEncoderLayer
from mpgsam2.modeling.sam2.global_context import ProjectedGlobalContext, project_global_context

SIZE = (20, 30)


class LazyFrames(Sequence):
    """Frames handed out one at a time, counting every read and the most frames alive at once."""

    def __init__(self, frames: torch.Tensor) -> None:
        self.frames = frames
        self.reads: list[int] = []
        self.alive = 0
        self.peak_alive = 0

    def _freed(self) -> None:
        self.alive -= 1

    def __len__(self) -> int:
        return self.frames.shape[0]

    def __getitem__(self, t: int) -> torch.Tensor:
        if not 0 <= t < len(self):
            raise IndexError(t)
        self.reads.append(t)
        frame = self.frames[t].clone()
        self.alive += 1
        self.peak_alive = max(self.peak_alive, self.alive)
        weakref.finalize(frame, self._freed)
        return frame


def assert_same_masks(prediction: ExpressionPrediction, reference: ExpressionPrediction) -> None:
    """Probabilities within 1e-4; masks equal except where the reference probability is within 1e-4 of 0.5."""
    assert prediction.logits.shape == reference.logits.shape
    diff = (prediction.probs - reference.probs).abs().max().item()
    assert diff <= 1e-4, f"probabilities differ by {diff}"
    undecided = (reference.probs - 0.5).abs() <= 1e-4
    assert torch.equal(prediction.masks & ~undecided, reference.masks & ~undecided)


@pytest.fixture(scope="module")
def model() -> MPGSAM2:
    return make_tiny_model().eval()


def expressions_of(ids: torch.Tensor, lengths: list[int], own_padding: bool = True):
    """Expressions cut from one id row at different lengths; some with a padding mask (with padded tail), one
    with None."""
    out = []
    for i, n in enumerate(lengths):
        text = ids[0, :n].clone()
        text[n - 1] = 2
        if i == 1:
            mask = None
        else:
            mask = torch.zeros(n, dtype=torch.bool)
            if own_padding and i == 2 and n > 3:
                mask[-2:] = True  # a collated expression: its own padding, also masked when run alone
        out.append((text, mask))
    return out


@torch.no_grad()
def streamed(model, sam, beit, text_ids, mask, chunk_size=None) -> ExpressionPrediction:
    """The reference: each chunk through ``MPGSAM2.start_video`` and ``VideoSession.track`` frame by frame."""
    out = torch.empty((sam.shape[0], *SIZE))
    for start, end in chunk_bounds(sam.shape[0], chunk_size):
        session = model.start_video(beit[start:end], text_ids, mask)
        for t in range(end - start):
            out[start + t] = resize_logits(session.track(t, sam[start + t]).high_res_logits, SIZE)[0, 0]
    return ExpressionPrediction(logits=out)


def check(model, sam, beit, expressions, chunk_size=None, **options) -> list[ExpressionPrediction]:
    out = predict_video(model, sam, beit, expressions, SIZE, chunk_size=chunk_size, **options)
    assert len(out) == len(expressions)
    sam_t = sam.frames if isinstance(sam, LazyFrames) else sam
    beit_t = beit.frames if isinstance(beit, LazyFrames) else beit
    for (text_ids, mask), prediction in zip(expressions, out):
        alone = predict_expression(model, sam_t, beit_t, text_ids, mask, SIZE, chunk_size=chunk_size)
        assert_same_masks(prediction, alone)
        assert_same_masks(prediction, streamed(model, sam_t, beit_t, text_ids, mask, chunk_size))
    return out


def test_one_expression(model):
    sam, beit, ids, pad = random_clip(model, frames=4)
    check(model, sam[0], beit[0], [(ids[0], pad[0])])


def test_expressions_of_different_lengths_each_get_their_own_masks(model):
    sam, beit, ids, _ = random_clip(model, frames=4, seed=1)
    ids = torch.randint(4, 40, (1, 12), generator=torch.Generator().manual_seed(3))
    expressions = expressions_of(ids, [12, 5, 9, 3])
    out = check(model, sam[0], beit[0], expressions)
    # the expressions really differ (else equality above would say little about per-expression batching)
    assert (out[0].probs - out[1].probs).abs().max() > 5e-4  # 5x the tolerance


@pytest.mark.parametrize("beit_batch", [1, 2, 3, 64])
def test_beit3_calls_of_any_size_give_the_same_masks(model, beit_batch, monkeypatch):
    """BEiT-3 runs on groups of frames x groups of expressions of at most beit_batch sequences (here 4 expressions
    of 5 frames: one sequence per call, 2 expressions per call, 3 expressions then 1, and all 20 in one)."""
    calls = []
    original = MPGSAM2.encode_tokens

    def counting(self, frames, text_ids, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append((text_ids.shape[0], frames.shape[1]))  # (expressions, frames) of the call
        return original(self, frames, text_ids, *args, **kwargs)

    sam, beit, ids, _ = random_clip(model, frames=5, seed=4)
    ids = torch.randint(4, 40, (1, 12), generator=torch.Generator().manual_seed(5))
    expressions = expressions_of(ids, [12, 5, 9, 3])
    with monkeypatch.context() as patch:
        patch.setattr(MPGSAM2, "encode_tokens", counting)
        predict_video(model, sam[0], beit[0], expressions, SIZE, beit_batch=beit_batch)
    assert all(k * t <= beit_batch for k, t in calls)
    assert sum(k * t for k, t in calls) == 4 * 5
    check(model, sam[0], beit[0], expressions, beit_batch=beit_batch)
    with pytest.raises(ValueError, match="beit_batch"):
        predict_video(model, sam[0], beit[0], expressions_of(ids, [3]), SIZE, beit_batch=0)


def test_lengths_batched_without_the_decoder_word_mask_would_differ(model, monkeypatch):
    # the test above relies on masking the words past each expression's length in the decoder: without it the
    # short expressions attend to other expressions' padding and their logits move
    sam, beit, _, _ = random_clip(model, frames=3, seed=2)
    ids = torch.randint(4, 40, (1, 12), generator=torch.Generator().manual_seed(3))
    expressions = expressions_of(ids, [12, 4])
    reference = predict_expression(model, sam[0], beit[0], *expressions[1], SIZE)
    from mpgsam2.modeling.sam2 import tracker

    original = tracker.SAM2Tracker.forward_heads

    def unmasked(self, pix_feat, high_res, prompts, **kwargs):
        prompts.text_key_padding_mask = None
        return original(self, pix_feat, high_res, prompts, **kwargs)

    monkeypatch.setattr(tracker.SAM2Tracker, "forward_heads", unmasked)
    out = predict_video(model, sam[0], beit[0], expressions, SIZE)
    assert (out[1].probs - reference.probs).abs().max() > 1e-4


def test_chunks_and_lazy_frames_are_read_once(model):
    sam, beit, ids, _ = random_clip(model, frames=7, seed=4)
    ids = torch.randint(4, 40, (1, 10), generator=torch.Generator().manual_seed(5))
    lazy_sam, lazy_beit = LazyFrames(sam[0]), LazyFrames(beit[0])
    expressions = expressions_of(ids, [10, 6, 8])
    check(model, lazy_sam, lazy_beit, expressions, chunk_size=3)
    # each frame is read once, whatever K, and SAM frames in order (streamed, not materialised up front)
    assert lazy_sam.reads == list(range(7))
    assert sorted(lazy_beit.reads) == list(range(7))
    assert lazy_sam.peak_alive == 1


def test_chunked_result_differs_from_whole_video(model):
    # chunks are independent runs: a chunked prediction is not the whole-video one (so the chunk test checks chunks)
    sam, beit, ids, pad = random_clip(model, frames=5, seed=6)
    whole = predict_video(model, sam[0], beit[0], [(ids[0], pad[0])], SIZE)[0]
    chunked = predict_video(model, sam[0], beit[0], [(ids[0], pad[0])], SIZE, chunk_size=2)[0]
    assert (whole.probs - chunked.probs).abs().max() > 5e-4


def test_no_object(model):
    sam, beit, ids, _ = random_clip(model, frames=4, seed=7)
    head = model.sam.sam_mask_decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    saved = last.bias.detach().clone()
    try:
        with torch.no_grad():
            last.bias.fill_(-1e4)  # the object-score head says absent on every frame
        out = check(model, sam[0], beit[0], expressions_of(ids, [7, 4]))
        assert all(not p.masks.any() for p in out)
    finally:
        with torch.no_grad():
            last.bias.copy_(saved)


def test_prior_layer_in_query_chunks_equals_the_whole_layer(monkeypatch):
    torch.manual_seed(0)
    layer = PostNormEncoderLayer(32, 4, 64).eval()
    src = torch.randn(37, 2, 32)  # [N, B, D]
    with torch.enable_grad():  # the grad path: nn.MultiheadAttention over all tokens at once
        whole = layer(src).detach()
    monkeypatch.setattr(PostNormEncoderLayer, "inference_token_chunk", 8)  # 5 chunks, the last one short
    calls = []
    monkeypatch.setattr(layer.self_attn, "forward", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        chunked = layer(src)
    assert not calls  # the chunked path, not nn.MultiheadAttention
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_prior_layer_in_token_chunks_is_exact(model, monkeypatch):
    sam, beit, ids, pad = random_clip(model, frames=3, seed=8)
    whole = predict_video(model, sam[0], beit[0], [(ids[0], pad[0])], SIZE)[0]
    monkeypatch.setattr(PostNormEncoderLayer, "inference_token_chunk", 5)  # 3 x 16 tokens -> 10 chunks
    chunked = predict_video(model, sam[0], beit[0], [(ids[0], pad[0])], SIZE)[0]
    torch.testing.assert_close(chunked.logits, whole.logits, atol=1e-5, rtol=1e-5)


def test_decoder_runs_the_global_fusion_from_the_projected_context_alone(model):
    decoder = model.sam.sam_mask_decoder
    assert decoder.use_pixel_global_fusion and decoder.use_object_global_fusion
    torch.manual_seed(10)
    image_pe = model.sam.sam_prompt_encoder.get_dense_pe()
    c, e = image_pe.shape[1], image_pe.shape[-1]
    b, t, words = 2, 3, 5
    context = torch.randn(b, t, 16, c)  # 4 x 4 grid
    inputs = dict(
        image_embeddings=torch.randn(b, c, e, e),
        image_pe=image_pe,
        sparse_prompt_embeddings=torch.randn(b, 2, c),
        dense_prompt_embeddings=torch.randn(b, c, e, e),
        multimask_output=False,
        repeat_image=False,
        high_res_features=[torch.randn(b, c // 8, 4 * e, 4 * e), torch.randn(b, c // 4, 2 * e, 2 * e)]
        if decoder.use_high_res_features
        else None,
        text_feat=torch.randn(b, words, c),
        text_key_padding_mask=torch.tensor([[False] * words, [False] * 3 + [True] * 2]),
        obj_memory=torch.randn(2, b, c),
        obj_memory_pos=torch.randn(2, b, c),
    )
    with torch.no_grad():
        from_context = decoder(**inputs, global_context=context)
        projected = project_global_context(decoder, context)
        from_projection = decoder(**inputs, global_context=projected)
        without = decoder(**inputs, global_context=None)
    for cached, direct in zip(from_projection, from_context):
        torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)
    assert (without[0] - from_context[0]).abs().max() > 1e-3  # the context mattered
    # a projection made without a block this decoder runs is refused by name, not failed on deep inside
    partial = ProjectedGlobalContext(pixel_kv=projected.pixel_kv, object_tokens=None)
    with torch.no_grad(), pytest.raises(ValueError, match="has no object_tokens, which this decoder"):
        decoder(**inputs, global_context=partial)


def test_predict_video_releases_the_global_context_while_tracking(model, monkeypatch):
    seen = []
    track_step = model.sam.track_step

    def spy(state, t, feats, prompts):  # noqa: ANN001, ANN202
        seen.append((prompts.global_context, feats.shared, feats.top.shape[0]))
        return track_step(state, t, feats, prompts)

    monkeypatch.setattr(model.sam, "track_step", spy)
    sam, beit, ids, pad = random_clip(model, frames=3, seed=11)
    predict_video(model, sam[0], beit[0], [(ids[0], pad[0]), (ids[0, :4], None)], SIZE)
    # the decoder reads only the projection, computed once for the clip: the raw [K, T, G*G, C] is gone
    assert len(seen) == 3 and all(isinstance(context, ProjectedGlobalContext) for context, _, _ in seen)
    assert len({id(context) for context, _, _ in seen}) == 1
    # one frame's features for the 2 expressions, declared shared (not inferred from strides)
    assert all(shared and batch == 2 for _, shared, batch in seen)


def test_projecting_the_global_context_frees_the_raw_one(model):
    """``start_tracking(cache_context=True)`` replaces the clip context's one reference to the raw [B, T, G*G, C]
    tensor by its projection, so nothing keeps the raw tensor alive while the clip is tracked."""
    sam, beit, ids, pad = random_clip(model, frames=3, batch=2, seed=13)
    with torch.no_grad():
        context = model.encode_context(beit, ids, pad)
        raw = weakref.ref(context.global_context)
        session = model.start_tracking(context, cache_context=True)
        assert raw() is None
        assert isinstance(session.context.global_context, ProjectedGlobalContext)
        out = session.step(0, model.image_features(sam[:, 0]))
    assert out.high_res_logits.shape[0] == 2


def test_predict_video_in_train_mode_shares_and_caches_nothing(model, monkeypatch):
    """Train mode (dropout draws per target): the K targets get the frame's features unshared and the raw
    context, no cache; the masks still come out for each expression."""
    seen = []
    track_step = model.sam.track_step

    def spy(state, t, feats, prompts):  # noqa: ANN001, ANN202
        seen.append((feats.shared, isinstance(prompts.global_context, torch.Tensor)))
        return track_step(state, t, feats, prompts)

    monkeypatch.setattr(model.sam, "track_step", spy)
    sam, beit, ids, pad = random_clip(model, frames=2, seed=12)
    try:
        out = predict_video(model.train(), sam[0], beit[0], [(ids[0], pad[0]), (ids[0, :4], None)], SIZE)
    finally:
        model.eval()
    assert len(out) == 2 and seen == [(False, True)] * 2


def test_bad_inputs_are_refused(model):
    sam, beit, ids, pad = random_clip(model, frames=2)
    with pytest.raises(ValueError, match="BEiT-3 frames"):
        predict_video(model, sam[0], beit[0, :1], [(ids[0], pad[0])], SIZE)
    with pytest.raises(ValueError, match="precision"):
        predict_video(model, sam[0], beit[0], [(ids[0], pad[0])], SIZE, precision="int8")
    assert predict_video(model, sam[0], beit[0], [], SIZE) == []


def test_compile_is_a_model_option_that_runs_encoder_and_memory_attention_compiled(model, monkeypatch):
    """``compile_for_inference`` (the build / load option ``compile=True``; ``predict_video(compile=True)`` calls it
    for old callers) compiles the image encoder and memory attention once, in place, with the same masks and
    state-dict names, and no ``forward`` swapped."""
    compiled, made = [], []

    def fake_compile(fn):  # torch.compile itself takes minutes on this machine; check the wiring
        made.append(fn.__self__)

        def run(*args, **kwargs):
            compiled.append(fn.__self__)
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    fresh = make_tiny_model().eval()
    fresh.load_state_dict(model.state_dict())
    sam, beit, ids, pad = random_clip(model, frames=3, seed=9)
    plain = predict_video(fresh, sam[0], beit[0], [(ids[0], pad[0])], SIZE)[0]
    assert not compiled
    out = predict_video(fresh, sam[0], beit[0], [(ids[0], pad[0])], SIZE, compile=True)[0]
    assert {id(m) for m in compiled} == {id(fresh.sam.image_encoder), id(fresh.sam.memory_attention)}
    torch.testing.assert_close(out.logits, plain.logits)
    fresh.compile_for_inference()  # already compiled: nothing compiled again
    assert len(made) == 2
    assert "forward" not in vars(fresh.sam.image_encoder)
    assert list(fresh.state_dict()) == list(model.state_dict())
