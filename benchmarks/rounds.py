"""Figures from interleaved rounds: each round times every contender once, in turn."""

import statistics


def medians(per_round: dict[str, list[float]]) -> dict[str, float]:
    """Each contender's median rate over the rounds."""
    return {name: statistics.median(rates) for name, rates in per_round.items()}


def paired_ratio(per_round: dict[str, list[float]], ours: str, peers: tuple[str, ...]) -> float:
    """The median over rounds of ours over the best peer of the same round: a drift in the machine's speed
    between rounds falls on both sides of each ratio, where a ratio of medians would take it from different
    rounds."""
    return statistics.median(per_round[ours][r] / max(per_round[p][r] for p in peers)
                             for r in range(len(per_round[ours])))
