"""MetricLogger's progress lines: the meters chosen for the console, every meter kept."""
import re
import time

from util.logger import MetricLogger, SmoothedValue


def _run(logger: MetricLogger, n: int, print_freq: int = 1) -> None:
    for i in logger.log_every(range(n), print_freq, "Epoch: [2]"):
        logger.update(loss=1.0 + i, loss_ce=0.5, loss_ce_0=0.7, loss_ce_unscaled=0.25, lr=1e-4)


def test_shown_meters_in_their_order_and_nothing_else(capsys):
    logger = MetricLogger(shown=("lr", "loss", "loss_ce", "grad_norm"))
    _run(logger, 3)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Epoch: [2]  [")]
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert re.fullmatch(rf"Epoch: \[2\]  \[{i}/3\]  eta: \d+:\d\d:\d\d  [0-9.]+ it/s  lr: \S+ \(\S+\)  "
                            r"loss: \S+ \(\S+\)  loss_ce: \S+ \(\S+\)", line), line
    assert "loss_ce_0" not in str(logger) and "time:" not in lines[0]
    assert set(logger.meters) == {"loss", "loss_ce", "loss_ce_0", "loss_ce_unscaled", "lr"}
    assert logger.loss.global_avg == 2.0


def test_without_a_choice_every_meter_and_the_times_are_printed(capsys):
    logger = MetricLogger()
    _run(logger, 2)
    line = capsys.readouterr().out.splitlines()[0]
    for name in ("loss", "loss_ce", "loss_ce_0", "loss_ce_unscaled", "lr", "time", "data"):
        assert f"  {name}: " in line, name


def test_a_meter_added_ahead_prints_only_once_updated():
    logger = MetricLogger(shown=("loss", "grad_norm"))
    logger.add_meter("grad_norm", SmoothedValue(window_size=1, fmt="{value:.2f}"))
    logger.update(loss=3.0)
    assert str(logger) == "loss: 3.0000 (3.0000)"
    logger.update(grad_norm=1.5)
    assert str(logger) == "loss: 3.0000 (3.0000)  grad_norm: 1.50"
    assert str(MetricLogger()) == ""


def test_on_print_gets_each_printed_iteration_once_done_with_its_times():
    def slow(n):
        for i in range(n):
            time.sleep(0.02)  # waiting for the batch
            yield i

    calls = []
    logger = MetricLogger()
    for _ in logger.log_every(slow(5), 2, "Epoch: [0]", total=5, on_print=lambda *a: calls.append(a)):
        time.sleep(0.01)  # the step
    assert [i for i, _, _ in calls] == [0, 2, 4]  # every print_freq and the last
    for _, iteration_seconds, data_seconds in calls:
        assert 0.02 <= data_seconds < iteration_seconds
        assert iteration_seconds >= 0.03
