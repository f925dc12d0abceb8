"""tools/summary.py: every stage, and SimMIM's decoder and encoder.
"""

import os

from conftest import ROOT

from tools import summary


def test_summary_lists_every_stage(capsys):
    assert summary.main(["--cfg", os.path.join(ROOT, "configs", "swin_tiny.yaml")]) == 0
    text = capsys.readouterr().out
    assert "28,288,354 parameters, 4.49 GMACs at 224x224" in text
    assert [line.split()[:3] for line in text.splitlines()[2:]] == [["0", "56x56", "96"], ["1", "28x28", "192"],
                                                                   ["2", "14x14", "384"], ["3", "7x7", "768"]]


def test_summary_describes_the_decoder_and_the_encoder(capsys):
    assert summary.main(["--cfg", os.path.join(ROOT, "configs", "simmim", "simmim_pretrain__swin_cifar10.yaml")]) == 0
    decoder = 192 * (8 * 8 * 3) + 8 * 8 * 3  # 1x1 conv from 48 x 2^2 channels to stride^2 x 3, with bias
    assert capsys.readouterr().out.startswith(f"SimMIM pre-training: a pixel decoder ({decoder:,} parameters, "
                                              "stride 8) on the encoder simmim_pretrain_cifar10: ")
