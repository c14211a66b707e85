"""`asymlora privacy`: epsilon from dp-accounting, checked against the closed form of the Gaussian
mechanism's RDP, monotone in the noise, and the inverse for a target epsilon."""

from __future__ import annotations

import json
import math

import pytest

from asymlora.cli import main
from asymlora.federated.privacy import epsilon, noise_for_epsilon


def gaussian_epsilon_by_hand(z: float, rounds: int, delta: float) -> float:
    """Without subsampling, T Gaussian steps have RDP T a / (2 z^2) at order a; dp-accounting converts
    RDP to (epsilon, delta) with Canonne-Kamath-Steinke's bound, minimised over its orders."""
    orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64)) + [128, 256, 512, 1024]
    best = math.inf
    for a in orders:
        rdp = rounds * a / (2 * z * z)
        eps = rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return best


@pytest.mark.parametrize("z,rounds", [(1.0, 10), (2.5, 3), (0.8, 50)])
def test_epsilon_without_sampling_is_the_gaussian_closed_form(z, rounds):
    assert epsilon(z, 1.0, rounds, 1e-5) == pytest.approx(gaussian_epsilon_by_hand(z, rounds, 1e-5), rel=1e-6)


def test_more_noise_less_epsilon_and_sampling_amplifies():
    eps = [epsilon(z, 0.25, 10, 1e-5) for z in (0.6, 1.0, 2.0, 4.0)]
    assert eps == sorted(eps, reverse=True) and len(set(eps)) == 4
    assert epsilon(1.0, 0.25, 10, 1e-5) < epsilon(1.0, 1.0, 10, 1e-5)
    assert epsilon(0.0, 0.25, 10, 1e-5) == math.inf


def test_target_epsilon_gives_the_noise_that_reaches_it():
    z = noise_for_epsilon(8.0, 0.5, 10, 1e-4)
    assert epsilon(z, 0.5, 10, 1e-4) <= 8.0 < epsilon(z * 0.99, 0.5, 10, 1e-4)


def test_cli(capsys):
    assert main(["privacy", "--noise-multiplier", "1.0", "--sample-rate", "1", "--rounds", "10",
                 "--delta", "1e-5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon"] == pytest.approx(epsilon(1.0, 1.0, 10, 1e-5))
    assert main(["privacy", "--target-epsilon", "8", "--sample-rate", "0.5", "--rounds", "10", "--delta", "1e-4",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["noise_multiplier"] == pytest.approx(noise_for_epsilon(8.0, 0.5, 10, 1e-4)) and out["epsilon"] <= 8.0


@pytest.mark.parametrize("args,message", [
    (["--noise-multiplier", "-1"], "noise multiplier must be a finite number >= 0, got -1.0"),
    (["--noise-multiplier", "1", "--delta", "1.5"], "delta must be in (0, 1), got 1.5"),
    (["--noise-multiplier", "1", "--sample-rate", "0"], "sample rate must be in (0, 1], got 0.0"),
    (["--noise-multiplier", "1", "--target-epsilon", "3"], "give exactly one of --noise-multiplier and --target-epsilon"),
])
def test_bad_settings_are_one_line(capsys, args, message):
    base = {"--sample-rate": "0.5", "--rounds": "3", "--delta": "1e-5"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    assert main(["privacy", *[x for kv in base.items() for x in kv]]) == 2
    assert capsys.readouterr().err.strip() == f"asymlora privacy: error: {message}"
