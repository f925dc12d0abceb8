"""Figures from interleaved rounds: each round times every contender once, in turn."""

import statistics


def medians(per_round: dict[str, list[float]]) -> dict[str, float]:
    """Each contender's median rate over the rounds."""
    return {name: statistics.median(rates) for name, rates in per_round.items()}


def paired_ratio(per_round: dict[str, list[float]], ours: str, peers: tuple[str, ...]) -> float:
    """Ours over the best peer (the one with the highest median rate): the median over rounds of the two rates'
    ratio within a round, so a drift in the machine's speed between rounds falls on both sides of each ratio.
    (The best peer of each round instead would pick every round's luckiest noise among close peers.)"""
    best = max(peers, key=lambda name: statistics.median(per_round[name]))
    return statistics.median(o / b for o, b in zip(per_round[ours], per_round[best]))
