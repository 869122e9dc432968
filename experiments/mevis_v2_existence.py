"""MeViS v2's existence decision measured on synthetic data: the demo's synthetic videos in the MeViS v2 layout with
no-target expressions added, a tiny model trained on them with the object-score loss, and N-acc / T-acc / J&F /
Final on valid_u for a range of ``system.existence_threshold`` values (docs/evaluation.md, "MeViS v1 and v2").

    # 1. the demo's synthetic dataset (generated when missing) as a MeViS v2 folder: train and valid_u, each video
    #    with its one no-target expression (a long caption in a colour the video lacks: it refers to nothing here;
    #    written by the generator since its format 2, carried over with empty obj_id / anno_id lists)
    python experiments/mevis_v2_existence.py convert data/synthetic_ytvos data/synthetic_mevis_v2
    # 2. train the demo model on it, with SAM 2's object-score head and the v2 object-score loss
    python train.py experiment=demo data=mevis data.root=data/synthetic_mevis_v2 data.version=v2 \
        data.tokenizer_path=data/synthetic_ytvos/tokenizer.model data.num_frames=3 data.batch_size=4 \
        data.num_workers=0 data.photometric=false model.sam2.settings.pred_obj_scores=true \
        model.sam2.settings.pred_obj_scores_mlp=true model.sam2.settings.fixed_no_obj_ptr=true \
        system.criterion.weights.object_score=1.0 logger=csv
    # 3. the scores of valid_u at each threshold (one inference pass; the rule is applied afterwards)
    python experiments/mevis_v2_existence.py measure <run>/checkpoints/final.ckpt data/synthetic_mevis_v2
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from mpgsam2.data import ClipTransform, MeViSSource, RefYTVOSSource
from mpgsam2.data.synthetic import SyntheticConfig, generate_synthetic_ytvos
from mpgsam2.inference import apply_existence, predict_video
from mpgsam2.metrics import NoTargetJFMetric
from mpgsam2.text import Beit3Tokenizer
from mpgsam2.weights import load_model

THRESHOLDS = (None, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def convert(synthetic: Path, out: Path) -> None:
    """Writes ``out/{train,valid_u}`` (MeViS v2 file names) from the synthetic Ref-YouTube-VOS folder."""
    synthetic = generate_synthetic_ytvos(synthetic, SyntheticConfig())
    if out.exists():
        shutil.rmtree(out)
    for split, target_split in (("train", "train"), ("valid", "valid_u")):
        source = RefYTVOSSource(synthetic, split)
        by_video: dict[str, list] = {}
        for expr in source.expressions:
            by_video.setdefault(expr.video.video_id, []).append(expr)
        videos = list(by_video)
        meta: dict[str, dict] = {}
        mask_dict: dict[str, list] = {}
        for vid in videos:
            exprs = by_video[vid]
            video = exprs[0].video
            shutil.copytree(video.frame_paths[0].parent, out / target_split / "JPEGImages" / vid)
            ids = np.stack(
                [np.asarray(Image.open(source.mask_path(video, t))) for t in range(video.num_frames)]
            )
            anno: dict[int, str] = {}
            for obj in sorted({o for e in exprs for o in e.obj_ids}):
                key = str(len(mask_dict) + 1)
                anno[obj] = key
                rles = []
                for frame in ids:
                    m = frame == obj
                    rle = coco_mask.encode(np.asfortranarray(m.astype(np.uint8))) if m.any() else None
                    rles.append(
                        None if rle is None else {"size": list(rle["size"]), "counts": rle["counts"].decode()}
                    )
                mask_dict[key] = rles
            # the no-target expression (MeViS v2: empty obj_id and anno_id lists) as the generator wrote it
            expressions = {
                e.exp_id: {"exp": e.caption, "obj_id": [], "anno_id": []}
                if e.no_target
                else {"exp": e.caption, "obj_id": [0], "anno_id": [int(anno[e.obj_ids[0]])]}
                for e in exprs
            }
            meta[vid] = {"expressions": expressions, "frames": list(video.frame_names)}
        (out / target_split / "meta_expressions_v2.json").write_text(json.dumps({"videos": meta}))
        (out / target_split / "mask_dict.json").write_text(json.dumps(mask_dict))
        print(
            f"{target_split}: {len(videos)} videos, {sum(len(m['expressions']) for m in meta.values())} expressions"
        )


def measure(checkpoint: Path, root: Path) -> None:
    """Prints and writes (``<checkpoint dir>/existence.json``) the v2 scores of valid_u for each threshold."""
    loaded = load_model(checkpoint)
    model = loaded.model.eval()
    tokenizer = Beit3Tokenizer(loaded.tokenizer_path)
    source = MeViSSource(root, "valid_u", version="v2")
    transform = ClipTransform(**model.input_sizes, train=False)
    metrics = {t: NoTargetJFMetric(sync_on_compute=False) for t in THRESHOLDS}
    by_video: dict[str, list] = {}
    for expr in source.expressions:
        by_video.setdefault(expr.video.video_id, []).append(expr)
    existence = {"target": [], "no_target": []}
    for exprs in by_video.values():
        video = exprs[0].video
        indices = list(range(video.num_frames))
        frames = source.read_frames(video, indices)
        sam, beit, _, _ = transform(frames, None, exprs[0].caption)
        texts = []
        for e in exprs:
            ids, mask = tokenizer([e.caption])
            texts.append((ids[0], ~mask[0]))
        with torch.inference_mode():
            predictions = predict_video(model, sam, beit, texts, frames.shape[1:3], chunk_size=24)
        for e, p in zip(exprs, predictions):
            truth = source.read_masks(e, indices)
            existence["no_target" if e.no_target else "target"].append(p.existence)
            for threshold, metric in metrics.items():
                metric.update(apply_existence(p, threshold).masks, truth, is_target=not e.no_target)
    rows = {str(t): m.compute() for t, m in metrics.items()}
    print("| existence_threshold | J&F | J&F (target) | N-acc | T-acc | Final |")
    print("|---|---|---|---|---|---|")
    for t, r in rows.items():
        print(
            f"| {t} | {r['jf']:.4f} | {r['jf_target']:.4f} | {r['n_acc']:.4f} | {r['t_acc']:.4f} | {r['final']:.4f} |"
        )
    for kind, values in existence.items():
        print(
            f"max_t sigmoid(object score), {kind}: quartiles {np.quantile(values, [0, 0.25, 0.5, 0.75, 1]).round(4)}"
        )
    out = checkpoint.parent / "existence.json"
    out.write_text(json.dumps({"scores": rows, "existence": existence}, indent=1))
    print(f"written: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("synthetic", type=Path)
    c.add_argument("out", type=Path)
    m = sub.add_parser("measure")
    m.add_argument("checkpoint", type=Path)
    m.add_argument("root", type=Path)
    args = parser.parse_args()
    if args.command == "convert":
        convert(args.synthetic, args.out)
    else:
        measure(args.checkpoint, args.root)


if __name__ == "__main__":
    main()
