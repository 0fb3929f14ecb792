"""Probes of the DeltaTok mechanism: does the decoder use the token, and is "no change" no change?

End scores cannot tell a tokenizer whose decoder ignores the token from one that uses it: the
decoder alone already "explains" part of the change from the previous features. These probes
measure the mechanism directly and are shared by training (the check at the end of the
tokenizer stage), `deltaworld evaluate-world` and `deltaworld eval`.

token reliance   error of a pair decoded with the token of ANOTHER pair of the same stream,
                 divided by the error with its own token: 1.0 = the token is ignored, > 1 it
                 carries the pair's change.
identity error   error of decode(encode(y, y), y) against y ("no change" must decode to no
                 change), divided by the copy-last error |y_prev - y|^2 of the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .deltatok import DeltaTok

MIN_TOKEN_RELIANCE = 1.1  # below this the tokenizer stage stops: the token is ignored


@dataclass(frozen=True)
class TokenProbe:
    own_error: float  # mean squared error, decoded with each pair's own token
    swapped_error: float  # ... with another pair's token of the same stream
    copy_error: float  # mean squared error of copying the previous features
    identity_error: float  # mean squared error of decode(encode(y, y), y) against y
    pairs: int

    @property
    def reliance(self) -> float:
        return self.swapped_error / max(self.own_error, 1e-12)

    @property
    def identity_ratio(self) -> float:
        return self.identity_error / max(self.copy_error, 1e-12)

    @property
    def explained(self) -> float:
        """Share of the copy-last error removed by decoding with the own token."""
        return 1 - self.own_error / max(self.copy_error, 1e-12)

    @classmethod
    def pooled(cls, probes: list[TokenProbe]) -> TokenProbe:
        """The probe of the union of the pairs of several probes (pair-weighted means)."""
        n = sum(p.pairs for p in probes)

        def mean(field: str) -> float:
            return sum(getattr(p, field) * p.pairs for p in probes) / n

        return cls(
            mean("own_error"), mean("swapped_error"), mean("copy_error"), mean("identity_error"), n
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "token_reliance": self.reliance,
            "identity_ratio": self.identity_ratio,
            "explained": self.explained,
            "own_error": self.own_error,
            "swapped_error": self.swapped_error,
            "copy_error": self.copy_error,
            "identity_error": self.identity_error,
            "pairs": self.pairs,
        }


def partner_pairs(streams: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """For every pair, the index of another pair of the same stream (itself if it has none)."""
    streams = np.asarray(streams)
    partner = np.arange(len(streams))
    for s in np.unique(streams):
        members = np.flatnonzero(streams == s)
        if len(members) > 1:
            # a random derangement inside the stream: shift a shuffled order by one
            order = generator.permutation(members)
            partner[order] = np.roll(order, 1)
    return partner


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().mean(dim=(-2, -1))


@torch.no_grad()
def probe_tokens(
    tokenizer: DeltaTok,
    x: torch.Tensor,
    y: torch.Tensor,
    partner: np.ndarray,
    batch: int = 64,
) -> TokenProbe:
    """x, y (P, N, C) previous and current features of P pairs; partner (P,) from partner_pairs.

    Pairs alone in their stream (partner[i] == i) are left out.
    """
    if len(x) != len(y) or len(x) != len(partner):
        raise ValueError(f"pairs disagree in length: x {len(x)}, y {len(y)}, {len(partner)}")
    keep = np.flatnonzero(np.asarray(partner) != np.arange(len(partner)))
    if not len(keep):
        raise ValueError("token reliance needs streams with at least two feature pairs")
    # the partner's index among the kept pairs
    position = np.full(len(partner), -1)
    position[keep] = np.arange(len(keep))
    swap = torch.from_numpy(position[np.asarray(partner)[keep]])
    index = torch.from_numpy(keep)
    x, y = x[index], y[index]
    was_training = tokenizer.training
    tokenizer.eval()
    z = torch.cat(
        [tokenizer.encode(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
    )
    own, swapped, copy, identity = [], [], [], []
    for i in range(0, len(x), batch):
        xs, ys = x[i : i + batch], y[i : i + batch]
        own.append(_mse(tokenizer.decode(z[i : i + batch], xs), ys))
        swapped.append(_mse(tokenizer.decode(z[swap[i : i + batch]], xs), ys))
        copy.append(_mse(xs, ys))
        identity.append(_mse(tokenizer.decode(tokenizer.encode(ys, ys), ys), ys))
    tokenizer.train(was_training)
    return TokenProbe(
        own_error=float(torch.cat(own).mean()),
        swapped_error=float(torch.cat(swapped).mean()),
        copy_error=float(torch.cat(copy).mean()),
        identity_error=float(torch.cat(identity).mean()),
        pairs=len(keep),
    )
