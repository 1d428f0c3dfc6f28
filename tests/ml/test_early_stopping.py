"""The stopping rules against the papers' definitions, on hand-made histories."""

from __future__ import annotations

from ml.config import EarlyStoppingSpec
from ml.early_stopping import asha_decision, asha_rungs, decide, median_should_stop
from ml.status import Decision


def asha_should_stop(
    history: list[float], others: list[list[float]], min_epochs: int, eta: int, max_epochs: int
) -> bool:
    """The stopping form of ASHA (never waits)."""
    return asha_decision(history, others, min_epochs, eta, max_epochs) is Decision.PRUNE


def should_stop(
    rule: EarlyStoppingSpec, history: list[float], others: list[list[float]], epochs: int
) -> bool:
    return decide(rule, history, others, epochs) is Decision.PRUNE


def test_rungs_are_geometric_and_below_the_last_epoch() -> None:
    assert asha_rungs(1, 3, 27) == [1, 3, 9]
    assert asha_rungs(2, 2, 16) == [2, 4, 8]
    assert asha_rungs(5, 3, 5) == []


def test_asha_decides_only_at_rungs() -> None:
    worse_everywhere = [0.1, 0.1]  # epoch 2 is not a rung of (1, 3)
    assert not asha_should_stop(worse_everywhere, [[0.9, 0.9]], min_epochs=1, eta=3, max_epochs=9)


def test_asha_first_arrival_at_a_rung_continues() -> None:
    assert not asha_should_stop([0.1], [], min_epochs=1, eta=3, max_epochs=9)


def test_asha_keeps_only_the_top_third_of_a_rung() -> None:
    rung1 = [[0.9], [0.8], [0.7], [0.6], [0.5]]
    # Six trials at the rung: the top 6/3 = 2 continue.
    assert not asha_should_stop([0.85], rung1, 1, 3, 9)  # rank 2
    assert asha_should_stop([0.75], rung1, 1, 3, 9)  # rank 3
    assert not asha_should_stop([0.95], rung1, 1, 3, 9)  # rank 1


def test_asha_compares_at_the_rung_epoch_not_the_latest() -> None:
    others = [[0.2, 0.3, 0.9, 0.95], [0.2, 0.3, 0.8], [0.1, 0.2, 0.7]]
    assert asha_should_stop([0.5, 0.5, 0.6], others, 1, 3, 9)
    assert not asha_should_stop([0.5, 0.5, 0.95], others, 1, 3, 9)


def test_median_rule_uses_running_averages_of_the_others() -> None:
    others = [[0.2, 0.4, 0.6], [0.3, 0.5, 0.7], [0.1, 0.1, 0.1]]
    # Running averages at epoch 3: 0.4, 0.5, 0.1 -> median 0.4.
    assert median_should_stop([0.1, 0.2, 0.39], others, min_epochs=3)
    assert not median_should_stop([0.1, 0.2, 0.4], others, min_epochs=3)  # not strictly worse
    assert not median_should_stop([0.45, 0.35, 0.2], others, min_epochs=3)  # best so far counts


def test_median_rule_waits_for_min_epochs_and_for_peers() -> None:
    assert not median_should_stop([0.0, 0.0], [[0.9, 0.9]], min_epochs=3)
    assert not median_should_stop([0.0, 0.0, 0.0], [], min_epochs=3)
    assert not median_should_stop([0.0, 0.0, 0.0], [[0.9, 0.9]], min_epochs=3)  # peer not at epoch 3


def test_dispatch_by_strategy() -> None:
    others = [[0.9], [0.8]]
    assert should_stop(EarlyStoppingSpec(strategy="asha", min_epochs=1), [0.1], others, 9)
    assert not should_stop(EarlyStoppingSpec(strategy="none"), [0.1], others, 9)
    assert should_stop(EarlyStoppingSpec(strategy="median", min_epochs=1), [0.1], others, 9)


def test_asha_promotes_only_the_top_floor_n_over_eta_and_else_waits_when_it_may() -> None:
    # Li et al.'s promotion rule: with n results at a rung, the top floor(n / eta) go on.
    assert asha_decision([0.9], [], 1, 3, 9, may_wait=True) is Decision.PAUSE  # floor(1/3) = 0
    assert asha_decision([0.9], [[0.5]], 1, 3, 9, may_wait=True) is Decision.PAUSE  # floor(2/3) = 0
    assert asha_decision([0.9], [[0.5], [0.4]], 1, 3, 9, may_wait=True) is Decision.CONTINUE  # top 1 of 3
    assert asha_decision([0.45], [[0.5], [0.4]], 1, 3, 9, may_wait=True) is Decision.PAUSE
    assert asha_decision([0.45], [[0.5], [0.4]], 1, 3, 9, may_wait=False) is Decision.PRUNE


def test_asha_without_waiting_is_the_stopping_form() -> None:
    # Nobody left to arrive (or it waited already): the first arrival continues, as in Ray Tune.
    assert asha_decision([0.1], [], 1, 3, 9, may_wait=False) is Decision.CONTINUE
    assert asha_decision([0.5, 0.5], [[0.9, 0.9]], 1, 3, 9, may_wait=True) is Decision.CONTINUE  # no rung


def test_only_asha_ever_waits() -> None:
    median = EarlyStoppingSpec(strategy="median", min_epochs=1)
    assert decide(median, [0.9], [], 9, may_wait=True) is Decision.CONTINUE
    assert decide(median, [0.1], [[0.9], [0.8]], 9, may_wait=True) is Decision.PRUNE
    assert decide(EarlyStoppingSpec(strategy="none"), [0.1], [], 9, may_wait=True) is Decision.CONTINUE
