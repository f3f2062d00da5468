"""Training curves from the metrics.json that detectron2's JSONWriter writes."""

import numpy as np
import pytest
from detectron2.utils.events import EventStorage, JSONWriter
from PIL import Image

from panoptic_ext.cli import plot_metrics as cli
from panoptic_ext.vis.metrics_plot import read_metrics


def _write_run(path, iterations, lr0=0.02, eval_every=20):
    """A run as detectron2's trainer logs it: losses + lr every iteration, PQ/AP at evaluations."""
    writer = JSONWriter(str(path), window_size=1)
    with EventStorage(iterations[0]) as storage:
        for it in iterations:
            storage.iter = it
            storage.put_scalars(total_loss=3.0 / (1 + it), loss_cls=2.0 / (1 + it),
                                loss_mask=1.0 / (1 + it), lr=lr0 * (1 - it / 100))  # fmt: skip
            if (it + 1) % eval_every == 0:
                storage.put_scalars(**{"panoptic_seg/PQ": it / 2, "panoptic_seg/PQ_th": it / 3,
                                       "bbox/AP": it / 4}, smoothing_hint=False)  # fmt: skip
            writer.write()
    writer.close()


def test_curves_from_a_resumed_run(tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    _write_run(metrics, range(0, 60))
    _write_run(metrics, range(40, 80), lr0=0.01)  # resumed at 40: these values win
    with open(metrics, "a") as f:
        f.write('{"iteration": 80, "total_lo')  # a run killed while writing
    history = read_metrics(str(tmp_path))
    its, lr = history.series["lr"]
    assert np.array_equal(its, np.arange(80))  # repeated iterations once each
    assert lr[39] == pytest.approx(0.02 * (1 - 39 / 100)) and lr[40] == pytest.approx(0.01 * 0.6)
    its, pq = history.series["panoptic_seg/PQ"]
    assert its.tolist() == [19, 39, 59, 79] and pq.tolist() == [9.5, 19.5, 29.5, 39.5]
    assert cli.main([str(tmp_path), "--output", str(tmp_path / "png")]) == 0
    printed = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in printed] == ["loss.png", "lr.png", "eval.png"]
    for path in printed:
        image = np.asarray(Image.open(path).convert("L"))
        assert image.shape[0] > 200 and image.std() > 10
    # loss.png has a panel per loss term and total_loss: 3 panels side by side.
    assert Image.open(printed[0]).size[0] > 2.5 * Image.open(printed[1]).size[0]


def test_bad_metrics_file_is_named(tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 0, "lr": 0.1}\nnot json\n{"iteration": 1, "lr": 0.1}\n')
    assert cli.main([str(metrics)]) == 1
    assert f"{metrics}:2" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "nothing")]) == 1
    assert "no metrics file" in capsys.readouterr().err


def test_loss_median_is_centred_in_iterations():
    """The smoothed curve does not lag: on a straight line the centred median is the line itself
    (away from the ends); the window counts iterations, whatever the logging period."""
    from panoptic_ext.vis.metrics_plot import _running_median

    its = np.arange(0, 1000, 20, dtype=np.float64)  # detectron2's default period
    line = 5.0 - its / 1000
    smoothed = _running_median(its, line, 200)
    assert np.allclose(smoothed[5:-5], line[5:-5])
    spike = line.copy()
    spike[20] = 100.0  # one outlier record inside a window of 11 records
    assert np.allclose(_running_median(its, spike, 200)[15:26], line[15:26], atol=0.03)
    assert _running_median(its, line, 1).tolist() == line.tolist()  # window below the period
