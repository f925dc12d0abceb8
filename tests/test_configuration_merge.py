"""configuration/merge.py: config files and --opts merge strictly; a mistake names the key, the file and a fix.
"""

import pytest
from conftest import TINY_CFG

from config import load_config
from utils import ConfigError


def test_opts_override_and_coerce():
    cfg = load_config(TINY_CFG, ["TRAIN.BASE_LR", "1", "DATA.DATA_PATH", "/some/where", "MODEL.SWIN.APE", "True"])
    assert cfg.TRAIN.BASE_LR == 1.0 and isinstance(cfg.TRAIN.BASE_LR, float)
    assert cfg.DATA.DATA_PATH == "/some/where" and cfg.MODEL.SWIN.APE is True


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("DATA:\n  BATCH_SIZ: 4\n")
    with pytest.raises(ConfigError, match=r"DATA\.BATCH_SIZ in .*bad\.yaml .*did you mean DATA\.BATCH_SIZE\?"):
        load_config(str(path))


def test_base_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("BASE: ['b.yaml']\n")
    (tmp_path / "b.yaml").write_text("BASE: ['a.yaml']\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(str(tmp_path / "a.yaml"))
