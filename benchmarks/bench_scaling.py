"""Cost vs image size and batch on this CPU, so that users can predict a preset's cost before they run it:
generation seconds per volume (the U-Net evaluations of the default flow sampler with class guidance on its
guidance interval, plus decoding), LDM and VAE training step times, and each measurement's peak memory.

    python benchmarks/bench_scaling.py                      # sizes 32^3 .. 128x128x64, tiny networks (~10 min)
    python benchmarks/bench_scaling.py --sizes 64x64x32 --presets tiny,small
    python benchmarks/bench_scaling.py --device cuda --presets paper --sizes 256x256x128 --train-batch 1

The networks are freshly initialised (speed does not depend on the weights). Generation per volume is
measured, not modelled, for its parts: one guided U-Net call on a batch (``2 x batch`` items: the request and
its null-class branch) per guided step, one plain call (``batch`` items) per other step (the default flow steps
and guidance interval, or ``--steps`` with that interval), divided by the batch, plus the decoder pass in the
generator's chunks (``synthaug.generate.DECODE_BATCH``, or ``--decode-batch``); all in
the generator's default precision on the device (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32);
a MAISI autoencoder decodes with the preset's split convolutions. Training steps are batch ``--train-batch``
(default 4) with the trainer's settings: LDM fp32 with fused AdamW, VAE under the trainer's autocast (bf16
on CPU, fp16 with loss scaling on CUDA) on whole volumes and, where the preset trains on patches, on its
patch size. Each configuration runs in its own process, so its peak memory is its own: RSS, and on CUDA
the peak of allocated GPU memory. Prints a table and writes benchmarks/results/bench_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SIZES = ("32x32x32", "48x48x32", "64x64x32", "96x96x48", "128x128x64")


def _best(fn, reps: int, device: str = "cpu") -> float:
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    fn()  # warm-up (oneDNN and cuDNN pick their kernels on the first call)
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(preset: str, size: str, batch: int, steps: int, reps: int, train: bool, device: str = "cpu",
            train_batch: int = 4, overrides: tuple[str, ...] = (), layout: str = "auto",
            decode_batch: int | None = None) -> dict:
    """Runs in a child process: one (preset, size, batch) configuration on ``device``."""
    import torch

    from synthaug.config import load_config
    from synthaug.generate import DECODE_BATCH, generation_layout, generation_precision
    from synthaug.ldm.autoencoder import build_autoencoder, decode_latents, downsample_factor, resolve_precision
    from synthaug.ldm.model import CCELLALDM, null_class
    from synthaug.ldm.sampling import build_sampler, guided_steps

    shape = [int(v) for v in size.split("x")]
    cfg = load_config(preset=preset, overrides=[f"data.image_shape={shape}", *overrides])
    g = torch.Generator().manual_seed(0)
    ldm = CCELLALDM.from_config(cfg, text_dim=384).eval().to(device)
    vae = build_autoencoder(cfg.autoencoder, seed=0).eval().to(device)
    latent = [s // downsample_factor(cfg) for s in shape]
    c = cfg.autoencoder.latent_channels
    tokens = cfg.text.max_tokens
    precision = generation_precision("auto", torch.device(device))
    dtype = resolve_precision(precision, device)
    memory_format = generation_layout(torch.device(device), precision) if layout == "auto" else torch.contiguous_format
    ldm.to(memory_format=memory_format)
    vae.to(memory_format=memory_format)
    items = 2 * batch  # the request and its null-class branch (class guidance)
    x = torch.randn((items, c, *latent), generator=g).to(device)
    t = torch.randint(0, 1000, (items,), generator=g).to(device)
    text = torch.randn((items, tokens, 384), generator=g).to(device)
    mask = torch.ones(items, tokens, dtype=torch.bool, device=device)
    spacing = torch.tensor([list(cfg.data.spacing)] * items, device=device)
    z = torch.randn((batch, c, *latent), generator=g)
    splits = cfg.sample.decode_splits if cfg.autoencoder.kind == "maisi" else None

    def autocast():
        return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)

    sampler = build_sampler("flow", cfg.diffusion.model_copy(update={"prediction": "flow"}), steps)
    guided = sum(guided_steps(sampler.timesteps, cfg.diffusion.num_train_timesteps, cfg.sample.guidance_interval))
    with torch.no_grad():
        context, logits = ldm.adapter(text, mask, t)
        probs = torch.cat([logits.softmax(-1)[:batch], null_class(batch, logits)])

        def unet(n: int = items) -> None:
            with autocast():
                ldm.unet(x[:n], t[:n], context[:n], probs[:n], spacing[:n])

        def decode() -> None:
            with autocast():
                decode_latents(vae, z, batch_size=min(batch, decode_batch or DECODE_BATCH), device=device,
                               num_splits=splits)

        unet_s, decode_s = _best(unet, reps, device), _best(decode, reps, device)
        plain_s = _best(lambda: unet(batch), reps, device)
    row = {"preset": preset + "".join(f" {o}" for o in overrides), "size": size, "batch": batch, "device": device,
           "precision": precision, "layout": str(memory_format).removeprefix("torch."), "steps": sampler.steps,
           "guided_steps": guided, "decode_batch": min(batch, decode_batch or DECODE_BATCH),
           "unet_call_s": unet_s, "unet_plain_call_s": plain_s, "decode_s": decode_s,
           "generation_s_per_volume": (guided * unet_s + (sampler.steps - guided) * plain_s + decode_s) / batch,
           "ldm_params_m": sum(p.numel() for p in ldm.parameters()) / 1e6,
           "vae_params_m": sum(p.numel() for p in vae.parameters()) / 1e6}
    if device.startswith("cuda"):
        row["gpu"] = torch.cuda.get_device_name(device)
        row["generation_peak_gpu_gib"] = _gpu_peak(device)
    if train:  # training runs in the trainer's (default) layout
        ldm.to(memory_format=torch.contiguous_format)
        vae.to(memory_format=torch.contiguous_format)
        row.update(_train_steps(cfg, ldm, vae, shape, latent, reps, device, train_batch))
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if device.startswith("cuda"):
        row["peak_gpu_gib"] = max(v for k, v in row.items() if k.endswith("peak_gpu_gib"))
    return row


def _gpu_peak(device: str) -> float | None:
    """GiB of GPU memory allocated at the peak since the last call (None on a CPU); resets the peak."""
    import torch

    if not device.startswith("cuda"):
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def _train_steps(cfg, ldm, vae, shape, latent, reps: int, device: str, b: int) -> dict:
    import torch

    from synthaug.ldm.autoencoder import _AutoencoderRun
    from synthaug.ldm.model import joint_loss

    g = torch.Generator().manual_seed(1)
    c, tokens = cfg.autoencoder.latent_channels, cfg.text.max_tokens
    ldm.train()
    opt = torch.optim.AdamW(ldm.parameters(), lr=1e-4, fused=True)
    x = torch.randn((b, c, *latent), generator=g).to(device)
    t = torch.randint(0, 1000, (b,), generator=g).to(device)
    text = torch.randn((b, tokens, 384), generator=g).to(device)
    mask = torch.ones(b, tokens, dtype=torch.bool, device=device)
    spacing = torch.tensor([list(cfg.data.spacing)] * b, device=device)
    labels = (torch.arange(b) % 2).to(device)
    isnull = torch.zeros(b, dtype=torch.bool, device=device)

    def ldm_step() -> None:
        pred, logits = ldm(x, t, text, mask, spacing)
        loss = joint_loss(pred, x, logits, labels, isnull, cfg.loss)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = {"train_batch": b, "ldm_step_s": _best(ldm_step, reps, device), "ldm_step_peak_gpu_gib": _gpu_peak(device)}
    # the trainer's own step (synthaug.ldm.autoencoder): its autocast (bf16 on CPU, fp16 with loss scaling on
    # CUDA), posterior noise, loss and fused AdamW
    run = _AutoencoderRun(vae, b, cfg.autoencoder, device=device, precision="auto", seed=1)
    for name, box in (("vae_step_s", shape), ("vae_patch_step_s", cfg.autoencoder.patch_size)):
        if box is None:
            continue
        volume = torch.rand((b, 1, *box), generator=g).to(device)

        def vae_step(volume: torch.Tensor = volume) -> None:
            run.train_step(volume, 0)

        out[name] = _best(vae_step, max(1, reps - 1), device)
        out[name.removesuffix("_s") + "_peak_gpu_gib"] = _gpu_peak(device)
    return {k: v for k, v in out.items() if v is not None}


def _child(preset: str, size: str, batch: int, steps: int, reps: int, train: bool, device: str,
           train_batch: int, overrides: list[str], layout: str, decode_batch: int | None) -> dict:
    call = json.dumps([preset, size, batch, steps, reps, train, device, train_batch, overrides, layout, decode_batch])
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_scaling; "
            f"print(json.dumps(bench_scaling.measure(*json.loads({call!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        return {"preset": preset, "size": size, "batch": batch, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="XxYxZ list (default: %(default)s)")
    parser.add_argument("--presets", default="tiny", help="network sizes, e.g. tiny,small (default tiny)")
    parser.add_argument("--batches", default="1,4,16,32", help="generation batches at --batch-size-at")
    parser.add_argument("--batch-size-at", default="64x64x32", help="the size the batch sweep runs at")
    parser.add_argument("--batch", type=int, default=4, help="generation batch of the size sweep (default 4)")
    parser.add_argument("--steps", type=int, help="sampler steps (default: flow's default)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--train-batch", type=int, default=4, help="batch of the training steps (default 4)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every row, e.g. autoencoder.patch_size=[128,128,64]")
    parser.add_argument("--layout", choices=["auto", "contiguous"], default="auto",
                        help="auto: the generator's weight layout (channels-last 3D in bf16 on a CPU); contiguous: the "
                             "default layout, to measure what channels-last gains")
    parser.add_argument("--decode-batch", type=int, help="volumes decoded at once (default: the generator's chunk)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_scaling.json")
    args = parser.parse_args()

    from _record import write_record
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    load_before = os.getloadavg()[0]
    common = (args.steps, args.reps)
    rows = [_child(p, s, args.batch, *common, True, args.device, args.train_batch, args.set, args.layout, args.decode_batch)
            for p in args.presets.split(",") for s in args.sizes.split(",")]
    rows += [_child(args.presets.split(",")[0], args.batch_size_at, int(b), *common, False, args.device,
                    args.train_batch, args.set, args.layout, args.decode_batch)
             for b in args.batches.split(",") if b and (int(b) != args.batch or args.batch_size_at not in args.sizes)]
    where = args.device if args.device == "cpu" else f"{args.device} ({rows[0].get('gpu', '?')})"
    chain = next((r for r in rows if "steps" in r), {})
    table = Table(title=f"cost vs size and batch on {where}: {os.cpu_count()} cores, load before {load_before:.2f}, "
                        f"flow {chain.get('steps')} steps, {chain.get('guided_steps')} of them with class guidance (2 "
                        "U-Net items per volume), "
                        f"training batch {args.train_batch}")
    for col in ("preset", "size", "batch", "precision", "gen s/volume", "U-Net call s (guided)", "U-Net call s (plain)",
                "decode s", "LDM step s",
                "VAE step s (whole)", "VAE step s (patch)", "peak RSS GiB", "peak GPU GiB"):
        table.add_column(col, justify="right")

    def cell(row: dict, key: str, fmt: str = "{:.3f}") -> str:
        return fmt.format(row[key]) if row.get(key) is not None else "-"

    for r in rows:
        if "error" in r:
            table.add_row(r["preset"], r["size"], str(r["batch"]), "error: " + r["error"][:60], *["-"] * 9)
            continue
        table.add_row(r["preset"], r["size"], str(r["batch"]), r["precision"], cell(r, "generation_s_per_volume"),
                      cell(r, "unet_call_s"), cell(r, "unet_plain_call_s"), cell(r, "decode_s"), cell(r, "ldm_step_s"), cell(r, "vae_step_s"),
                      cell(r, "vae_patch_step_s"), cell(r, "peak_rss_gib", "{:.2f}"), cell(r, "peak_gpu_gib", "{:.2f}"))
    console.print(table)
    write_record(args.out, {"rows": rows}, args, load_before)
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
