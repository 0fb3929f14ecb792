"""Token reliance and the identity error tell a tokenizer that uses its token from one that
ignores it, and the training check stops on the latter."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from deltaworld_ros.model.probes import TokenProbe, partner_pairs, probe_tokens


def test_partners_are_other_pairs_of_the_same_stream():
    streams = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    partner = partner_pairs(streams, np.random.default_rng(1))
    alone = partner == np.arange(len(streams))
    assert alone.tolist() == [s == 2 for s in streams]  # stream 2 has one pair
    assert (streams[partner] == streams).all()
    assert len(set(partner[~alone].tolist())) == (~alone).sum()  # a permutation


def _pairs(tiny_model, n: int = 12):
    g = torch.Generator().manual_seed(0)
    cfg = tiny_model.cfg
    x = torch.randn(n, cfg.num_patches, cfg.token_size, generator=g)
    y = x + 0.5 * torch.randn(n, cfg.num_patches, cfg.token_size, generator=g)
    return x, y, partner_pairs(np.arange(n) // 4, np.random.default_rng(0))


def test_a_tokenizer_that_ignores_its_token_has_reliance_one(tiny_model):
    x, y, partner = _pairs(tiny_model)
    loud = copy.deepcopy(tiny_model.tokenizer)
    for block in [*loud.encoder_blocks, *loud.decoder_blocks]:  # residual branches at full scale
        block.layer_scale1.lambda1.data.fill_(1.0)
        block.layer_scale2.lambda1.data.fill_(1.0)
    used = probe_tokens(loud, x, y, partner)
    # random weights: another token decodes to other features (better or worse, by chance)
    assert abs(used.reliance - 1) > 1e-3

    deaf = copy.deepcopy(loud)
    for block in deaf.encoder_blocks:  # the token stays its learned embedding, whatever the pair
        block.layer_scale1.lambda1.data.zero_()
        block.layer_scale2.lambda1.data.zero_()
    ignored = probe_tokens(deaf, x, y, partner)
    assert ignored.reliance == pytest.approx(1.0, abs=1e-6)
    assert ignored.pairs == len(x)


def test_pooled_probe_weighs_by_pairs():
    a = TokenProbe(1.0, 2.0, 4.0, 0.5, pairs=1)
    b = TokenProbe(3.0, 3.0, 4.0, 0.5, pairs=3)
    p = TokenProbe.pooled([a, b])
    assert p.pairs == 4
    assert p.own_error == pytest.approx(2.5) and p.swapped_error == pytest.approx(2.75)
    assert p.reliance == pytest.approx(1.1)
    assert p.identity_ratio == pytest.approx(0.125)
