"""data_dir is private to the user that runs the app (Ray-free: the check runs in app_builder)."""

from __future__ import annotations

import os
import stat

import pytest

from increc_ray.errors import ConfigError
from increc_ray.serve.app import private_data_dir


def test_a_new_data_dir_is_created_0700(tmp_path):
    path = tmp_path / "fresh" / "increc"
    private_data_dir(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_data_dir_others_may_write_to_is_refused(tmp_path, mode):
    path = tmp_path / "shared"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(ConfigError, match="writable by other users"):
        private_data_dir(str(path))


def test_a_readable_data_dir_of_ours_is_accepted(tmp_path):
    path = tmp_path / "ours"
    path.mkdir()
    path.chmod(0o755)
    private_data_dir(str(path))
