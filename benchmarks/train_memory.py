"""Training memory: what activation checkpointing saves, and which GPU runs which paper recipe.

Every measurement runs in a fresh subprocess and reports the peak RSS growth over the measured work, sampled every
2 ms. The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536``: every allocation above 64 KiB is its own mapping,
returned to the system when freed, so the RSS follows the live tensors (no freed heap kept from earlier work).

``--preset mid`` (or ``test``, the test model): one training step (forward, loss, backward, AdamW step) of the
mid-size preset of ``eval_throughput.py`` (BEiT-3 width 384 x 6 layers, Hiera-T trunk, full-size SAM 2 heads) at SAM ``--sam-size``
px, one clip of ``--frames`` frames, with ``model.activation_checkpointing`` empty and with every block, the
two alternating over ``--repeats`` rounds. Each process first runs one step on a 1-frame clip (kernels, the AdamW
state), then the measured step; its growth is gradients + activations + the step's temporaries.

``--recipes``: for each paper recipe (``experiment=<ytvos|mevis>_<size>``: its model at real size, its clip
length, one clip per device), the per-GPU memory of DDP, ZeRO-2 and FSDP over 8 GPUs:

- static memory counted from the parameters, bf16-mixed as Lightning runs it: fp32 weights (4 B per parameter),
  fp32 gradients of the trainable ones (4 B), AdamW's two fp32 moments (8 B). ZeRO-2 shards gradients and moments
  over the 8 devices, FSDP also the trainable weights (the frozen Hiera is counted whole on every device);
- activations measured here on the CPU: one forward + loss + backward of the real-size model in fp32 on clips of
  ``--measure-frames`` frames (gradients dropped as they are produced: they are counted above), then per frame
  extrapolated to the recipe's 5 / 8 frames (see ``extrapolate``), and halved for bf16 autocast (the assumption:
  activations stored in bf16 take half the fp32 bytes; softmax and norm statistics that autocast keeps in fp32
  make it a bit more). ``--attention fused`` (the default) runs SAM 2's attention through the fused kernel as
  GPUs do (no probability matrix kept for backward; see ``fused_attention_as_on_gpus``), ``math`` as the CPU does.

A recipe fits a GPU when static + activations stay below 90 % of its memory less 1 GiB (CUDA context and library
workspaces); "tight" up to 100 %. ``--measured FILE`` reprints the tables from the JSON line a run printed.

    python benchmarks/train_memory.py --preset mid [--sam-size 512] [--frames 3] [--repeats 2] [--threads 2]
    python benchmarks/train_memory.py --recipes [--sizes large base tiny] [--measure-frames 1 2 3] [--threads 2]
        [--activations-of large] [--attention fused|math] [--measured FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_throughput import BEIT_SIZE, mid_model, peak_rss_growth  # noqa: E402

from mpgsam2.losses import MPGSAM2Criterion  # noqa: E402
from mpgsam2.modeling.checkpointing import ACTIVATION_CHECKPOINTING_BLOCKS  # noqa: E402
from mpgsam2.modeling.mpgsam2 import MPGSAM2  # noqa: E402

ALL_BLOCKS = list(ACTIVATION_CHECKPOINTING_BLOCKS)
MIB, GIB = 2**20, 2**30
TEXT_LENGTH = 20  # tokens per expression (Ref-YouTube-VOS / MeViS sentences are 5-20 words)
GPU_SIZES_GB = (24, 40, 80)
CUDA_RESERVE_GIB = 1.0  # CUDA context, cuBLAS / cuDNN workspaces: not available to tensors
NUM_DEVICES = 8
STRATEGIES = ("DDP", "ZeRO-2", "FSDP")
RECIPES = ("ytvos", "mevis")  # 5 and 8 frames (conf/experiment/*.yaml data.num_frames)
SIZES = ("large", "base", "tiny")


# ----------------------------------------------------------------------------------------------- one step
def random_batch(model: MPGSAM2, frames: int, beit_size: int, seed: int = 0) -> tuple:
    """One clip of ``frames`` frames: SAM frames, BEiT-3 frames, text ids / padding, target masks, valid."""
    g = torch.Generator().manual_seed(seed)
    s = model.sam.image_size
    vocab = model.beit3.text_embed.num_embeddings
    ids = torch.randint(4, vocab - 4, (1, TEXT_LENGTH), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    return (
        torch.randn(1, frames, 3, s, s, generator=g),
        torch.randn(1, frames, 3, beit_size, beit_size, generator=g),
        ids,
        torch.zeros_like(ids, dtype=torch.bool),
        (torch.rand(1, frames, s, s, generator=g) > 0.5).float(),
        torch.ones(1, frames, dtype=torch.bool),
    )


def loss_of(model: MPGSAM2, batch: tuple) -> torch.Tensor:
    sam, beit, ids, pad, targets, valid = batch
    out = model(sam, beit, ids, pad)
    return MPGSAM2Criterion()(out.pred_masks, out.sentence_scores, targets, valid)["loss_total"]


def preset_model(preset: str, sam_size: int) -> MPGSAM2:
    if preset == "mid":
        return mid_model(sam_size)
    from omegaconf import OmegaConf

    from mpgsam2.build import model_config

    conf = ROOT / "conf" / "model"
    beit3 = OmegaConf.to_container(OmegaConf.load(conf / "beit3" / "test.yaml"))
    sam2 = OmegaConf.to_container(OmegaConf.load(conf / "sam2" / "test.yaml"))
    sam2["settings"]["image_size"] = sam_size
    torch.manual_seed(0)
    return MPGSAM2(model_config(beit3, sam2))


def step_child(spec: dict) -> dict:
    """One AdamW training step of a preset model, after a 1-frame warm-up step: peak RSS growth."""
    model = preset_model(spec["preset"], spec["sam_size"])
    model.set_activation_checkpointing(spec["blocks"])
    model.train()
    beit_size = BEIT_SIZE if spec["preset"] == "mid" else model.beit3.vision_embed.img_size
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=5e-4)

    def step(batch: tuple) -> None:
        loss_of(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(random_batch(model, 1, beit_size, seed=1))
    batch = random_batch(model, spec["frames"], beit_size)
    gc.collect()
    return {"peak_rss_growth": peak_rss_growth(lambda: step(batch))}


# ----------------------------------------------------------------------------------------------- recipes
def recipe_config(experiment: str, blocks: list[str]):
    """The composed train config of ``experiment=<experiment>`` (no weight files)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            config_name="train",
            overrides=[
                f"experiment={experiment}",
                "model.weights.mpgsam2=null",
                "model.weights.beit3=null",
                "model.weights.sam2=null",
                f"model.activation_checkpointing=[{','.join(blocks)}]",
            ],
        )
    GlobalHydra.instance().clear()
    return cfg


def build_recipe_model(experiment: str, blocks: list[str], device: str = "cpu") -> tuple[MPGSAM2, int, int]:
    """The recipe's model (random weights), its BEiT-3 input side and its clip length."""
    from hydra.utils import instantiate

    cfg = recipe_config(experiment, blocks)
    with torch.device(device):
        model = instantiate(cfg.model)
    # the BEiT-3 side from the config: model.input_sizes needs img_size in config.beit3, which presets omit
    return model, int(cfg.model.beit3.img_size), int(cfg.data.num_frames)


def fused_attention_as_on_gpus(model: MPGSAM2) -> None:
    """SAM 2's attention through PyTorch's fused kernel, as on GPUs (flash / memory-efficient attention keep no
    [Nq, Nk] probability matrix for backward); on the CPU the model forces the math kernel under autograd for
    parity, and the CPU's fused kernel takes no dropout, so the attention dropout is set to 0 here (on the GPU the
    fused kernel applies dropout without storing a mask). Memory measurement only."""
    from mpgsam2.modeling.sam2 import common

    common.sdpa_kernel = lambda backends: contextlib.nullcontext()
    for module in model.modules():
        if isinstance(module, common.Attention):
            module.dropout_p = 0.0


def activation_child(spec: dict) -> dict:
    """Peak RSS growth of one forward + loss + backward of a recipe's model at real size (fp32, one clip)."""
    model, beit_size, _ = build_recipe_model(spec["experiment"], spec["blocks"])
    model.train()
    if spec["attention"] == "fused":
        fused_attention_as_on_gpus(model)
    for p in model.parameters():
        if p.requires_grad:  # gradients are counted statically: drop each one once it is accumulated
            p.register_post_accumulate_grad_hook(lambda param: setattr(param, "grad", None))
    batch = random_batch(model, spec["frames"], beit_size)
    gc.collect()
    return {"peak_rss_growth": peak_rss_growth(lambda: loss_of(model, batch).backward())}


def parameter_counts(experiment: str) -> tuple[int, int]:
    """(all, trainable) parameters of a recipe's model, built on the meta device (no memory)."""
    model, _, _ = build_recipe_model(experiment, [], device="meta")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def static_bytes(total: int, trainable: int, strategy: str, devices: int = NUM_DEVICES) -> float:
    """Per-device bytes of weights, gradients and AdamW moments under bf16-mixed (all fp32)."""
    weights, grads, moments = 4 * total, 4 * trainable, 8 * trainable
    if strategy == "DDP":
        return weights + grads + moments
    if strategy == "ZeRO-2":
        return weights + (grads + moments) / devices
    if strategy == "FSDP":
        frozen = 4 * (total - trainable)
        return frozen + (4 * trainable + grads + moments) / devices
    raise ValueError(strategy)


def extrapolate(measured: dict[int, float], frames: int) -> tuple[float, str]:
    """Activation bytes at ``frames`` frames from the measured frame counts.

    Linear through the first two: frame t >= 1 of a clip reads the t memories before it, so a frame costs more the
    later it is; with three measurements the per-frame cost's growth is fitted too (quadratic in T: frame t costs
    b + m * t) and the larger of the two estimates is returned, with how it was obtained.
    """
    counts = sorted(measured)
    (t1, g1), (t2, g2) = (counts[0], measured[counts[0]]), (counts[1], measured[counts[1]])
    linear = g1 + (g2 - g1) / (t2 - t1) * (frames - t1)
    if len(counts) < 3 or counts[:3] != [1, 2, 3]:
        return linear, f"linear from T={t1},{t2}"
    g3 = measured[3]
    m = g3 - 2 * g2 + g1
    b = g2 - g1 - m
    quadratic = g1 + b * (frames - 1) + m * frames * (frames - 1) / 2
    if quadratic > linear:
        return quadratic, "fit to T=1,2,3 (per-frame cost growing with the memory bank)"
    return linear, "linear from T=1,2 (above the T=1,2,3 fit)"


# ----------------------------------------------------------------------------------------------- driver
def run_child(spec: dict, threads: int) -> dict:
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    cmd = [sys.executable, __file__, "--child", json.dumps(spec), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def preset_main(args: argparse.Namespace) -> int:
    print(
        f"torch {torch.__version__}, {args.threads} threads, preset {args.preset}, SAM {args.sam_size} px, "
        f"{args.frames} frames, batch 1, fp32 CPU; one training step (forward, loss, backward, AdamW step) after "
        "a 1-frame warm-up step; each configuration in a fresh process, alternating"
    )
    growth: dict[str, list[float]] = {"none": [], "all": []}
    for _ in range(args.repeats):
        for label, blocks in (("none", []), ("all", ALL_BLOCKS)):
            spec = {"mode": "step", "preset": args.preset, "sam_size": args.sam_size, "frames": args.frames}
            growth[label].append(run_child({**spec, "blocks": blocks}, args.threads)["peak_rss_growth"])
            print(f"  {label}: {growth[label][-1] / MIB:.1f} MiB", flush=True)
    none, every = statistics.median(growth["none"]), statistics.median(growth["all"])
    print("\n| activation_checkpointing | peak RSS growth per run (MiB) | median (MiB) | vs none |")
    print("|---|---|---:|---:|")
    for label, name, median in (("none", "[]", none), ("all", f"[{', '.join(ALL_BLOCKS)}]", every)):
        runs = ", ".join(f"{g / MIB:.1f}" for g in growth[label])
        print(f"| `{name}` | {runs} | {median / MIB:.1f} | {median / none:.2f}x |")
    return 0


def measure_activations(args: argparse.Namespace, sizes: list[str]) -> dict[str, dict[str, dict[int, float]]]:
    """{size: {"none" | "all": {T: fp32 activation bytes}}}, one fresh process per measurement."""
    measured: dict[str, dict[str, dict[int, float]]] = {}
    print(
        "\n| model | activation_checkpointing | T | fp32 activations, measured (GiB) |\n|---|---|---:|---:|"
    )
    for size in sizes:
        for label, blocks in (("none", []), ("all", ALL_BLOCKS)):
            for frames in args.measure_frames:
                spec = {
                    "mode": "activations",
                    "experiment": f"ytvos_{size}",
                    "blocks": blocks,
                    "frames": frames,
                    "attention": args.attention,
                }
                growth = run_child(spec, args.threads)["peak_rss_growth"]
                measured.setdefault(size, {}).setdefault(label, {})[frames] = growth
                print(f"| {size} | {label} | {frames} | {growth / GIB:.2f} |", flush=True)
    return measured


def verdict(need: float, gpu_gib: int) -> str:
    """fits / tight / no on a GPU of ``gpu_gib`` GiB, of which ``CUDA_RESERVE_GIB`` go to the CUDA context and
    library workspaces; "tight": above 90 % of the rest (the caching allocator's fragmentation may not fit)."""
    usable = (gpu_gib - CUDA_RESERVE_GIB) * GIB
    return "fits" if need <= 0.9 * usable else "tight" if need <= usable else "no"


def print_fit_table(
    counts: dict[str, tuple[int, int]],
    measured: dict[str, dict[str, dict[int, float]]],
    activations_of: str | None = None,
) -> None:
    """The recipe x strategy x GPU table; a size without measurements takes those of ``activations_of``."""
    header = " | ".join(f"{gb} GB" for gb in GPU_SIZES_GB)
    print(
        "\n| recipe | T | strategy | checkpointing | static, counted (GiB) | bf16 activations, measured + "
        f"extrapolated (GiB) | total (GiB) | {header} |"
    )
    print("|---|---:|---|---|---:|---:|---:|" + "---|" * len(GPU_SIZES_GB))
    notes = set()
    for size in counts:
        source = size if size in measured else activations_of
        borrowed = "" if source == size else f" ({source}'s)"
        total, trainable = counts[size]
        for recipe in RECIPES:
            frames = recipe_frames(recipe)
            for strategy in STRATEGIES:
                static = static_bytes(total, trainable, strategy)
                for label in ("none", "all"):
                    fp32, how = extrapolate(measured[source][label], frames)
                    notes.add(how)
                    need = static + fp32 / 2
                    fits = " | ".join(verdict(need, gb) for gb in GPU_SIZES_GB)
                    print(
                        f"| {recipe}_{size} | {frames} | {strategy} | {label} | {static / GIB:.1f} | "
                        f"{fp32 / 2 / GIB:.1f}{borrowed} | {need / GIB:.1f} | {fits} |",
                        flush=True,
                    )
    print("\nactivations extrapolated: " + "; ".join(sorted(notes)))


def recipes_main(args: argparse.Namespace) -> int:
    print(
        f"torch {torch.__version__}, {args.threads} threads; activations: fp32 on the CPU, one clip, "
        f"frames {args.measure_frames}, SAM 2 attention {args.attention}; bf16 activations = fp32 / 2 (assumed)"
    )
    counts = {size: parameter_counts(f"ytvos_{size}") for size in args.sizes}
    measure_sizes = [args.activations_of] if args.activations_of else args.sizes
    print("\n| model | parameters | trainable |\n|---|---:|---:|")
    for size, (total, trainable) in counts.items():
        print(f"| {size} | {total / 1e6:.1f} M | {trainable / 1e6:.1f} M |")
    if args.measured:  # the measurements of an earlier run (its JSON), e.g. to reprint the table
        data = json.loads(Path(args.measured).read_text())
        measured = {
            size: {label: {int(t): float(v) for t, v in rows.items()} for label, rows in by_label.items()}
            for size, by_label in data.items()
            if size in measure_sizes
        }
    else:
        measured = measure_activations(args, measure_sizes)
        print("\nmeasured (bytes): " + json.dumps(measured))
    print_fit_table(counts, measured, args.activations_of)
    return 0


def recipe_frames(recipe: str) -> int:
    """The clip length of a recipe (``data.num_frames``: 5 for Ref-YouTube-VOS, 8 for MeViS)."""
    return int(recipe_config(f"{recipe}_tiny", []).data.num_frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        choices=["mid", "test", "tiny"],
        help="measure one training step of this preset (tiny: deprecated name of test, the test model)",
    )
    parser.add_argument("--sam-size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--recipes", action="store_true", help="the paper recipes: static + measured memory")
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--measure-frames", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--attention",
        choices=["fused", "math"],
        default="fused",
        help="SAM 2 attention kernel for the recipes' activations: fused (as on GPUs) or math (the CPU's)",
    )
    parser.add_argument(
        "--activations-of",
        choices=SIZES,
        help="measure the activations of this size only and use them for every size (an upper bound for the "
        "smaller ones: the same SAM 2 heads at 1024 px, a smaller BEiT-3 and Hiera)",
    )
    parser.add_argument("--measured", help="JSON of an earlier run's measurements: print its tables only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # deprecated for one release: tiny is also the paper's size; test is the random test model
    if args.preset == "tiny":
        print("--preset tiny is deprecated: use --preset test (the same model)", file=sys.stderr)
        args.preset = "test"
    torch.set_num_threads(args.threads)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(step_child(spec) if spec["mode"] == "step" else activation_child(spec)))
        return 0
    if args.recipes:
        return recipes_main(args)
    if args.preset:
        return preset_main(args)
    parser.error("give --preset mid|test or --recipes")
    return 2


if __name__ == "__main__":
    sys.exit(main())
