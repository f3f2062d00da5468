"""Write failures name the file and the cause, whatever the writing library makes of them.

``/dev/full`` is a real device that answers every write with ENOSPC (no mock).
"""

import errno
import os

import cv2
import numpy as np
import pytest
import torch

from panoptic_ext.utils.paths import OutputIsInputError, refuse_outputs_over_inputs
from panoptic_ext.utils.write_errors import OutputWriteError, call_writer, write_bytes


def test_torch_save_on_a_full_disk_is_reported_as_enospc_naming_the_destination():
    # Without the wrapper torch only says "[enforce fail at inline_container.cc] ... failed".
    data = {"w": torch.zeros(1 << 20)}
    with open("/dev/full", "wb", buffering=0) as f, pytest.raises(OutputWriteError) as e:
        call_writer("out/model_final.pth", lambda g: torch.save(data, g), f)
    assert e.value.errno == errno.ENOSPC and e.value.filename == "out/model_final.pth"
    assert str(e.value).startswith(
        "cannot write out/model_final.pth: no space left on device [ENOSPC]; free space"
    )


def test_write_bytes_names_the_file_and_keeps_devices_and_earlier_files(tmp_path):
    with pytest.raises(OutputWriteError, match=r"cannot write /dev/full: no space left on device"):
        write_bytes("/dev/full", cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    assert os.path.exists("/dev/full")
    long = str(tmp_path / ("x" * 300 + ".png"))
    with pytest.raises(OutputWriteError, match=r"file name too long \[ENAMETOOLONG\]; a file name"):
        write_bytes(long, b"data")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(OutputWriteError, match=rf"cannot write {folder}: is a directory"):
        write_bytes(str(folder), b"data")
    assert folder.is_dir()


def test_outputs_over_inputs_are_refused_through_links_and_dots(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.json").write_text("{}")
    os.symlink(tmp_path / "data", tmp_path / "link")
    os.link(tmp_path / "data" / "a.json", tmp_path / "hard.json")
    inputs = {"--json": str(tmp_path / "data" / "a.json"), "--root": str(tmp_path / "data")}
    for out in ("link", "data/../link/", "hard.json", "link/a.json"):
        with pytest.raises(OutputIsInputError, match=r"--out .* is the same path as the input"):
            refuse_outputs_over_inputs(inputs, {"--out": str(tmp_path / out)})
    refuse_outputs_over_inputs(inputs, {"--out": [str(tmp_path / "data" / "b.json"), None]})
