"""The training precision: bf16 autocast where the hardware computes in bf16 (CUDA, CPUs with
AVX512-BF16 or AMX), fp32 elsewhere with the reason said; and the autocast step's numerics
against fp32 from the same start (models/devices.py, models/training.py)."""

import torch

from realsr.flows.train_settings import train_spec
from realsr.models.devices import cpu_flags, training_precision
from realsr.models.discriminators import DiscriminatorConfig, build_discriminator
from realsr.models.rrdbnet import RRDBConfig, RRDBNet
from realsr.models.training import Trainer
from realsr.steps.train import channels_last

CPU = torch.device("cpu")


def test_auto_takes_bf16_only_where_the_hardware_has_it_and_says_why(tmp_path):
    assert training_precision(CPU, "auto", {"avx2", "avx512f", "avx512_bf16"}) == (torch.bfloat16, "bf16 autocast (auto: the CPU has avx512_bf16)")
    assert training_precision(CPU, "auto", {"amx_bf16", "amx_tile"})[0] is torch.bfloat16
    dtype, why = training_precision(CPU, "auto", {"avx2", "avx512f", "avx512_vnni"})  # VNNI is int8, not bf16
    assert dtype is None and why.startswith("fp32 (auto: the CPU has no native bf16, none of avx512_bf16, amx_bf16")
    assert training_precision(torch.device("cuda"), "auto", set())[0] is torch.bfloat16
    assert training_precision(CPU, "fp32", {"avx512_bf16"}) == (None, "fp32 (asked for)")
    assert training_precision(CPU, "bf16", set()) == (torch.bfloat16, "bf16 autocast (asked for)")
    assert channels_last(CPU, torch.bfloat16) and not channels_last(CPU, None) and channels_last(torch.device("cuda"), None)

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # arm64 names its flags Features
    assert cpu_flags(info) == {"fp", "asimd", "bf16"} and cpu_flags(tmp_path / "missing") == set()


def _trainer(amp):
    torch.manual_seed(0)
    g = RRDBNet(RRDBConfig(num_feat=16, num_block=2, num_grow_ch=8, scale=4))
    torch.manual_seed(1)
    d = build_discriminator(DiscriminatorConfig(num_feat=16))
    if channels_last(CPU, amp):
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
    r = train_spec(pixel_weight=1.0, perceptual_weight=0.0, gan_weight=0.1, lr_g=1e-4, lr_d=1e-4).recipe
    return Trainer(g, d, None, r.losses, r.schedule, r.ema_decay, CPU, amp)


def _batch():
    gen = torch.Generator().manual_seed(2)
    hr = torch.rand(2, 3, 64, 64, generator=gen)
    return torch.nn.functional.avg_pool2d(hr, 4), hr


def test_a_bf16_autocast_step_follows_fp32_from_the_same_start_and_repeats_bitwise():
    lr, hr = _batch()
    runs = {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16), ("bf16 again", torch.bfloat16)):
        t = _trainer(amp)
        before = [p.detach().clone() for p in t.g.parameters()]
        logs = [t.step(lr, hr) for _ in range(3)]
        with torch.no_grad():
            out = t.g(lr).float()
        step = torch.cat([(p.detach() - b).flatten() for p, b in zip(t.g.parameters(), before)])
        runs[name] = (logs, out, step, [p.detach().clone() for p in t.g.parameters()])
    (l32, o32, s32, _), (l16, o16, s16, p16) = runs["fp32"], runs["bf16"]
    assert abs(l16[0]["l_pix"] - l32[0]["l_pix"]) < 0.02 * l32[0]["l_pix"]  # the first loss: same nets, same batch
    assert abs(l16[-1]["l_d"] - l32[-1]["l_d"]) < 0.05 * l32[-1]["l_d"] + 1e-3
    assert (o16 - o32).abs().mean() < 2e-3 and (o16 - o32).abs().max() < 0.05  # G after three steps: bf16 rounding, not another network
    cosine = float(torch.nn.functional.cosine_similarity(s16, s32, dim=0))
    assert cosine > 0.9, f"bf16's three updates point elsewhere than fp32's (cosine {cosine:.3f})"
    assert all(torch.isfinite(p).all() for p in p16)
    assert all(torch.equal(a, b) for a, b in zip(p16, runs["bf16 again"][3]))  # deterministic: a resumed run ends bitwise
