"""The block, the tiny LM with every mixer, the attention baselines and the small task's runner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from testtime.layers import LinearAttention, LMConfig, SoftmaxAttention, TinyLM, list_mixers
from testtime.layers.train_lm import TrainLMConfig, load_corpus, markdown, run


def _lm(mixer, **kw):
    torch.manual_seed(0)
    options = {"mini_batch_size": 4} if mixer.startswith("ttt") else {}
    return TinyLM(LMConfig(mixer=mixer, width=16, depth=2, num_heads=2, max_len=32, mixer_options=options, **kw))


def test_the_four_mixers_are_registered():
    assert list_mixers() == ["linear-attention", "softmax-attention", "ttt-linear", "ttt-mlp"]
    with pytest.raises(KeyError, match="unknown mixer 'mamba'"):
        LMConfig(mixer="mamba")


@pytest.mark.parametrize("mixer", list_mixers())
def test_lm_is_causal_and_optimises(mixer):
    model = _lm(mixer)
    tokens = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model(tokens)
        changed = tokens.clone()
        changed[:, 9:] = (changed[:, 9:] + 1) % 256
        b = model(changed)
    assert a.shape == (2, 20, 256)
    assert (a[:, :9] - b[:, :9]).abs().max() < 1e-5 and (a[:, 9:] - b[:, 9:]).abs().max() > 1e-5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


@pytest.mark.parametrize("mixer", ["ttt-linear", "ttt-mlp"])
def test_lm_decoding_with_caches_equals_the_full_forward(mixer):
    model = _lm(mixer).double()
    tokens = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        caches = model.new_caches()
        steps = [model(tokens[:, :5], caches)] + [model(tokens[:, t:t + 1], caches) for t in range(5, 11)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-10


def test_attention_baselines_against_plain_loops():
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(2))
    for cls in (SoftmaxAttention, LinearAttention):
        torch.manual_seed(0)
        layer = cls(8, 2)
        q, k, v = (p(x).view(1, 6, 2, 4).transpose(1, 2) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
        rows = []
        for t in range(6):
            if cls is SoftmaxAttention:
                w = torch.softmax(q[:, :, t:t + 1] @ k[:, :, :t + 1].transpose(-1, -2) / 2.0, -1)
            else:
                s = (F.elu(q[:, :, t:t + 1]) + 1) @ (F.elu(k[:, :, :t + 1]) + 1).transpose(-1, -2)
                w = s / s.sum(-1, keepdim=True)
            rows.append(w @ v[:, :, :t + 1])
        expected = layer.o_proj(torch.cat(rows, 2).transpose(1, 2).reshape(1, 6, 8))
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="^num_heads"):
        SoftmaxAttention(8, 3)
    with pytest.raises(ValueError, match="^caches: decoding with a cache needs a TTT mixer"):
        _lm("softmax-attention").new_caches()


def test_small_task_runs_on_a_corpus(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog. " * 400).encode()
    (tmp_path / "a.txt").write_bytes(text)
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")  # the same file once
    assert len(load_corpus(tmp_path)) == len(text)
    cfg = TrainLMConfig(corpus=str(tmp_path), steps=2, batch_size=2, seq_len=16, width=16, num_heads=2,
                        mini_batch_size=4, eval_every=1, eval_batches=1, warmup=1)
    results = run(cfg)
    table = markdown(results)
    assert [r["mixer"] for r in results] == list(cfg.mixers)
    assert table.splitlines()[0] == "| step | ttt-linear | ttt-mlp | linear-attention | softmax-attention |"
    assert all(sorted(r["val"]) == [0, 1, 2] for r in results)
    with pytest.raises(ValueError, match="^corpus:"):
        load_corpus(tmp_path / "missing")
    with pytest.raises(ValueError, match="^mixers: unknown 'rnn'"):
        run(TrainLMConfig(corpus=str(tmp_path), mixers=("rnn",)))
