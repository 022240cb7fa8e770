import math

import numpy as np
import pytest

from kpod.curriculum.difficulty import step_difficulties
from kpod.token_weights import TokenWeights


def test_eq8_by_hand():
    steps = ["ab cd. ", "ef."]
    offsets = [(0, 2), (3, 6), (7, 10), (0, 0)]  # two tokens in step 1, one in step 2, then the answer sentence
    in_rationale = [True, True, True, False]
    nll = np.array([1.0, 3.0, 2.0, 9.0])
    chars = TokenWeights([(0, 2), (3, 6), (7, 10)], [0.2, 0.8, 0.5]).char_array(10)
    got = step_difficulties(nll, offsets, in_rationale, steps, chars)
    soft = [math.exp(0.2) / (math.exp(0.2) + math.exp(0.8)), math.exp(0.8) / (math.exp(0.2) + math.exp(0.8))]
    assert got == pytest.approx([soft[0] * 1.0 + soft[1] * 3.0, 2.0])
    # without weights: the softmax is uniform, the plain mean NLL of the step
    assert step_difficulties(nll, offsets, in_rationale, steps, None) == pytest.approx([2.0, 2.0])


def test_step_without_tokens_gets_zero():
    assert step_difficulties(np.array([1.0]), [(0, 3)], [True], ["abc", "def"], None) == [1.0, 0.0]
