"""Embedders: default random encoder determinism, outputs softmax, user hooks, devices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from virk_exporter.embed.embedders import HookEmbedder, OutputsEmbedder, RandomConvEncoder, embedder_from_id
from virk_exporter.drift._torch import pick_device

ROOT = Path(__file__).resolve().parents[2]
# The id pins architecture version and a hash of the generated weights: if weight generation
# ever changes (numpy, code), this fails and the version must be bumped so old references are
# refused instead of silently compared in another feature space.
PINNED_ID = "random-conv/v1/size=64/seed=0/2b04d0c09b26"


def frames(n: int = 10, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_default_encoder_shape_id_and_batch_invariance() -> None:
    enc = RandomConvEncoder(device="cpu")
    assert enc.id == PINNED_ID and enc.dim == 512
    f = frames(10)
    a = enc.embed(f)
    assert a.shape == (10, 512) and a.dtype == np.float32 and np.isfinite(a).all()
    small_batches = RandomConvEncoder(batch_size=3, device="cpu").embed(f)
    np.testing.assert_allclose(small_batches, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.embed(f[0]), a[:1], rtol=1e-5, atol=1e-6)  # single frame
    assert RandomConvEncoder(seed=1).id != enc.id


@pytest.mark.slow
def test_default_encoder_identical_in_another_process() -> None:
    code = (
        "import numpy as np, sys; from virk_exporter.embed.embedders import RandomConvEncoder;"
        "f=np.random.default_rng(0).integers(0,256,size=(4,48,64,3),dtype=np.uint8);"
        "e=RandomConvEncoder(device='cpu'); sys.stdout.buffer.write(e.embed(f).tobytes()); print(e.id, file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    theirs = np.frombuffer(out.stdout, np.float32).reshape(4, 512)
    assert out.stderr.decode().strip().endswith(PINNED_ID)
    np.testing.assert_allclose(theirs, RandomConvEncoder(device="cpu").embed(frames(4)), rtol=1e-6, atol=1e-7)


def test_encoder_rejects_bad_frames() -> None:
    enc = RandomConvEncoder()
    with pytest.raises(ValueError):
        enc.embed(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError):
        enc.embed(np.zeros((2, 8, 8, 3), np.float32))


def test_outputs_embedder_softmax() -> None:
    emb = OutputsEmbedder(device="cpu")
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
    p = emb.embed_outputs(logits)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[1], 1 / 3, rtol=1e-6)
    assert emb.dim == 3
    probs = np.array([[0.7, 0.2, 0.1]], np.float32)
    np.testing.assert_allclose(emb.embed_outputs(torch.from_numpy(probs)), probs)  # kept as is
    with pytest.raises(ValueError, match="changed width"):
        emb.embed_outputs(np.zeros((1, 4)))
    with pytest.raises(TypeError):
        emb.embed(frames(1))


def test_hook_embedder_reads_a_layer_and_wraps_callables() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    hook = HookEmbedder(model, layer=model[1], id="my-model/relu1", batch_size=4, device="cpu")
    f = frames(9)
    z = hook.embed(f)
    assert z.shape == (9, 6) and hook.dim == 6 and hook.id == "my-model/relu1"
    with torch.no_grad():
        x = torch.from_numpy(f).permute(0, 3, 1, 2).float() / 255
        expected = model[1](model[0](x)).mean((2, 3)).numpy()
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    fn = HookEmbedder(lambda fr: fr.reshape(len(fr), -1)[:, :5].astype(np.float32), id="first5")
    assert fn.embed(f).shape == (9, 5)
    with pytest.raises(TypeError):
        HookEmbedder(lambda fr: fr, layer=model[0])


def test_embedder_from_id_round_trip() -> None:
    enc = RandomConvEncoder(seed=3)
    assert embedder_from_id(enc.id).id == enc.id
    assert isinstance(embedder_from_id("outputs-softmax/v1"), OutputsEmbedder)
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        embedder_from_id("random-conv/v1/size=64/seed=0/000000000000")
    with pytest.raises(ValueError, match="HookEmbedder"):
        embedder_from_id("hook/Sequential/ReLU")


def test_device_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert RandomConvEncoder().device == pick_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encoder_cpu_and_cuda_agree() -> None:
    f = frames(16)
    cpu = RandomConvEncoder(device="cpu").embed(f)
    gpu = RandomConvEncoder(device="cuda").embed(f)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
