"""Checkpoints are written like detectron2 writes them: with the umask's permissions, and
through ``PathManager`` for an ``OUTPUT_DIR`` on another storage (an iopath handler)."""

import os
import stat

import torch
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

from panoptic_ext.checkpoint import SafeCheckpointer


class _FolderHandler(PathHandler):
    """``testfs://x`` -> ``<root>/x``: a stand-in for a remote storage's iopath handler."""

    PREFIX = "testfs://"
    root = ""

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _local(self, path):
        return os.path.join(self.root, path[len(self.PREFIX) :])

    def _get_local_path(self, path, **kwargs):
        return self._local(path)

    def _open(self, path, mode="r", **kwargs):
        return open(self._local(path), mode)

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _isdir(self, path, **kwargs):
        return os.path.isdir(self._local(path))

    def _ls(self, path, **kwargs):
        return os.listdir(self._local(path))

    def _mkdirs(self, path, **kwargs):
        os.makedirs(self._local(path), exist_ok=True)

    def _rm(self, path, **kwargs):
        os.remove(self._local(path))


_HANDLER = _FolderHandler()
PathManager.register_handler(_HANDLER)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_saved_files_follow_the_umask(tmp_path):
    for umask, expected in ((0o022, 0o644), (0o027, 0o640)):
        out = tmp_path / f"umask{umask:o}"
        old = os.umask(umask)
        try:
            SafeCheckpointer(_model(), str(out)).save("model_0000009")
        finally:
            os.umask(old)
        assert _mode(out / "model_0000009.pth") == expected
        assert _mode(out / "last_checkpoint") == expected
        assert sorted(os.listdir(out)) == ["last_checkpoint", "model_0000009.pth"]  # no temp left


def test_a_non_local_output_dir_goes_through_its_handler(tmp_path):
    _HANDLER.root = str(tmp_path)
    model = _model()
    SafeCheckpointer(model, "testfs://run/output").save("model_final")
    assert (tmp_path / "run/output/last_checkpoint").read_text() == "model_final.pth"
    saved = torch.load(tmp_path / "run/output/model_final.pth", weights_only=True)
    assert torch.equal(saved["model"]["weight"], model.weight.detach())

    other = torch.nn.Linear(3, 2)
    reader = SafeCheckpointer(other, "testfs://run/output")
    assert reader.has_checkpoint()
    reader.resume_or_load("", resume=True)
    assert torch.equal(other.weight, model.weight)
