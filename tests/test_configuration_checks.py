"""configuration/checks.py: every value a config key refuses is one ConfigError naming the key.
"""

import pytest
from conftest import SIMMIM, TINY_CFG

from config import load_config
from configuration.checks import CHOICES, RANGES, Range
from utils import ConfigError


def _bad_value(rule: Range) -> float:
    if rule.high is not None:
        return rule.high if rule.high_open else rule.high + 1
    return rule.low if rule.low_open else rule.low - 1


def _bad_value_text(key: str, rule: Range) -> str:
    bad = _bad_value(rule)
    bad = int(bad) if rule.integer else float(bad)
    lists = {"MODEL.SWIN.DEPTHS", "MODEL.SWIN.NUM_HEADS", "MODEL.SWINV2.DEPTHS", "MODEL.SWINV2.NUM_HEADS",
             "MODEL.SWIN_MLP.DEPTHS", "MODEL.SWIN_MLP.NUM_HEADS", "MODEL.SWINV2.PRETRAINED_WINDOW_SIZES",
             "TRAIN.OPTIMIZER.BETAS", "TRAIN.LR_SCHEDULER.MULTISTEPS", "AUG.CUTMIX_MINMAX"}
    if key in lists:
        return f"[{bad}, {bad}]"
    return str(bad)


# The values each config key refuses, through load_config: every ranged and chosen key (from the checks' own
# tables, so a key added there is tested here) and the cross-key rules. Each is one line naming the key.
BASE = ("DATA.DATASET", "digits", "TRAIN.EPOCHS", "2")
VALUE_CASES = {f"{key} out of range": ((key, _bad_value_text(key, rule)), (key,)) for key, rule in RANGES.items()}


VALUE_CASES.update({f"{key} not a choice": ((key, "'bogus'"), (key, "use one of")) for key in CHOICES})


VALUE_CASES.update({
    "string for a number": (("TRAIN.BASE_LR", "fast"), ("TRAIN.BASE_LR", "float")),
    "float for an integer": (("DATA.BATCH_SIZE", "4.5"), ("DATA.BATCH_SIZE", "int")),
    "text for a list": (("MODEL.SWIN.DEPTHS", "two"), ("MODEL.SWIN.DEPTHS",)),
    "depths and heads of other lengths": (("MODEL.SWIN.DEPTHS", "[2, 2, 2]"), ("same length",)),
    "warm-up as long as training": (("TRAIN.WARMUP_EPOCHS", "2"), ("TRAIN.WARMUP_EPOCHS",)),
    "an empty tag": (("TAG", "''"), ("TAG is ''",)),
    "a model name with a slash": (("MODEL.NAME", "'a/b'"), ("MODEL.NAME is 'a/b'",)),
    "first epoch past the last": (("TRAIN.START_EPOCH", "5"), ("TRAIN.START_EPOCH is 5", "TRAIN.EPOCHS 2")),
    "unknown RandAugment policy": (("AUG.AUTO_AUGMENT", "'xyz'"), ("AUG.AUTO_AUGMENT", "'xyz'")),
    "RandAugment policy with a bad magnitude": (("AUG.AUTO_AUGMENT", "'rand-mx'"), ("AUG.AUTO_AUGMENT",)),
    "cutmix min above max": (("AUG.CUTMIX_MINMAX", "[0.8, 0.2]"), ("AUG.CUTMIX_MINMAX", "min < max")),
    "windows cannot tile": (("DATA.IMG_SIZE", "48", "MODEL.SWIN.WINDOW_SIZE", "5"), ("does not tile",)),
    "size not divisible": (("DATA.IMG_SIZE", "36"), ("DATA.IMG_SIZE 36",)),
    "heads do not divide channels": (("MODEL.SWIN.NUM_HEADS", "[3, 4]"), ("NUM_HEADS[0]",)),
    "unknown key": (("TRAIN.EPOCS", "3"), ("TRAIN.EPOCS", "did you mean TRAIN.EPOCHS")),
    "SimMIM mask patches that do not tile": ((*SIMMIM, "DATA.MASK_PATCH_SIZE", "12"),
                                             ("DATA.MASK_PATCH_SIZE 12 does not tile DATA.IMG_SIZE 32",)),
    "SimMIM mask patch of part of a model patch": ((*SIMMIM, "DATA.MASK_PATCH_SIZE", "2"),
                                                   ("not a multiple of MODEL.SWIN.PATCH_SIZE 4",)),
    "SimMIM normalisation window even": ((*SIMMIM, "MODEL.SIMMIM.NORM_TARGET.ENABLE", "True",
                                          "MODEL.SIMMIM.NORM_TARGET.PATCH_SIZE", "8"), ("odd size",)),
    "SimMIM of a swin_mlp": ((*SIMMIM, "MODEL.TYPE", "swin_mlp", "MODEL.SWIN_MLP.DEPTHS", "[2, 2]",
                              "MODEL.SWIN_MLP.NUM_HEADS", "[2, 4]", "MODEL.SWIN_MLP.WINDOW_SIZE", "4"),
                             ("swin or swinv2 encoder",)),
    "SimMIM with layer decay": ((*SIMMIM, "TRAIN.LAYER_DECAY", "0.9"),
                                ("TRAIN.LAYER_DECAY is for fine-tuning", "leave it at 1.0")),
    "SimMIM with a linear probe": ((*SIMMIM, "TRAIN.LINEAR_PROBE", "True"), ("TRAIN.LINEAR_PROBE",)),
    "negative batch size": (("DATA.BATCH_SIZE", "-4"), ("DATA.BATCH_SIZE is -4",)),
    "another model type": (("MODEL.TYPE", "resnet"), ("use one of swin, swinv2, swin_mlp",)),
    "an empty output folder": (("OUTPUT", "''"), ("config key OUTPUT is ''",)),
    "a NUL in the output folder": (("OUTPUT", "'out\\0put'"), ("config key OUTPUT is 'out",)),
    "a tab in the tag": (("TAG", "'a\\tb'"), ("config key TAG is 'a",)),
    "a float past any float": (("TRAIN.BASE_LR", str(-10 ** 400)), ("TRAIN.BASE_LR in --opts is -100000",)),
    "an integer past any integer": (("TRAIN.EPOCHS", str(-10 ** 400)), ("TRAIN.EPOCHS is -100000",)),
})


@pytest.mark.parametrize("name", sorted(VALUE_CASES))
def test_a_bad_value_is_one_config_error_naming_the_key(name):
    opts, fragments = VALUE_CASES[name]
    with pytest.raises(ConfigError) as error:
        load_config(TINY_CFG, (*BASE, *opts))
    message = str(error.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
