"""``predict_video``: K expressions of one video give the masks of ``predict_expression`` called once each."""

from __future__ import annotations

import torch
from test_model import random_clip, tiny_config

from mpgsam2.inference import predict_expression, predict_video
from mpgsam2.modeling.mpgsam2 import MPGSAM2


def test_predict_video_equals_predict_expression_per_expression_with_lazy_frames():
    torch.manual_seed(0)
    model = MPGSAM2(tiny_config()).eval()
    sam, beit, ids, pad = random_clip(model, frames=5, batch=1)
    sam, beit = sam[0], beit[0]
    lengths = [ids.shape[1], ids.shape[1] - 2]
    expressions = [(ids[0, :n], pad[0, :n]) for n in lengths]
    lazy_sam = [sam[t] for t in range(sam.shape[0])]  # a sequence of frames, not one tensor
    for chunk_size in (None, 2):
        out = predict_video(model, lazy_sam, beit, expressions, (20, 30), chunk_size=chunk_size)
        assert len(out) == 2
        for (text_ids, mask), prediction in zip(expressions, out):
            reference = predict_expression(model, sam, beit, text_ids, mask, (20, 30), chunk_size=chunk_size)
            torch.testing.assert_close(prediction.logits, reference.logits, atol=1e-4, rtol=1e-4)
