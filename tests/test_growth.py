"""Growth operators and schedules: pure functions, checked against the paper's pictures."""
from __future__ import annotations

import pytest

from fairseq_plugin.criterions.layer_distillation import student_layer_for
from fairseq_plugin.growth import (GrowthConfigError, Stage, check_settings, copy_slots, depth_at, grow_order, plan_stages,
                                   rewarmup_factor)


def grow_names(operator: str, depths=(3, 6, 9)) -> list[list[str]]:
    """Track which initial layer (a, b, c) each layer descends from, through 3 -> 6 -> 9 -> 12."""
    names = ["a", "b", "c"]
    history = []
    for d in depths:
        names = [names[j] for j in grow_order(operator, d, 3)]
        history.append(names)
    return history


def test_interleaved_keeps_relative_position():
    h = grow_names("interleaved")
    assert h[0] == list("aabbcc")
    assert h[1] == list("aaabbbccc")
    assert h[2] == list("aaaabbbbcccc")  # each initial layer ends as a block of 4 neighbours
    assert grow_order("interleaved", 3, 3) == [0, 0, 1, 1, 2, 2]
    assert grow_order("interleaved", 6, 3) == [0, 1, 1, 2, 3, 3, 4, 5, 5]
    assert grow_order("interleaved", 9, 3) == [0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8]


def test_stack_top_and_midas_move_layers():
    assert grow_names("stack_top")[2] == list("abcabcabcabc")
    assert grow_order("midas", 6, 3) == [0, 1, 2, 3, 1, 2, 3, 4, 5]  # middle block (1..3) copied after itself
    assert grow_names("midas")[1] == list("abcabcabc")


@pytest.mark.parametrize("operator", ["interleaved", "stack_top", "midas"])
@pytest.mark.parametrize("depth,n_new", [(3, 3), (4, 2), (5, 3), (2, 1)])
def test_every_layer_survives_and_copies_are_of_existing_layers(operator, depth, n_new):
    order = grow_order(operator, depth, n_new)
    assert len(order) == depth + n_new
    assert sorted(set(order)) == list(range(depth))
    originals = [order.index(j) for j in range(depth)]
    assert originals == sorted(originals), "original layers keep their relative order"


def test_schedules():
    assert plan_stages("eql", 400, 3, 12, 3) == [Stage(0, 3), Stage(100, 6), Stage(200, 9), Stage(300, 12)]
    assert plan_stages("prop", 1000, 3, 12, 3) == [Stage(0, 3), Stage(100, 6), Stage(300, 9), Stage(600, 12)]
    explicit = plan_stages("explicit", 100, 0, 12, 0, "0:3, 10:6, 20:12")
    assert explicit == [Stage(0, 3), Stage(10, 6), Stage(20, 12)]
    assert [depth_at(explicit, u) for u in (0, 9, 10, 19, 20, 99)] == [3, 3, 6, 6, 12, 12]


@pytest.mark.parametrize("args,message", [
    (("eql", 400, 3, 12, 4), "cannot reach the target depth"),
    (("explicit", 100, 0, 12, 0, "0:6,10:3,20:12"), "shrinks"),
    (("explicit", 100, 0, 12, 0, "0:3,10:9,20:12"), "needs more copies than there are layers"),
    (("explicit", 100, 0, 12, 0, "0:3,10:6"), "ends at depth 6, not the model's 12"),
    (("explicit", 100, 0, 12, 0, "5:3,10:6"), "must start at update 0"),
    (("explicit", 100, 0, 12, 0, "0:3,50:6,40:12"), "does not come after"),
    (("explicit", 100, 0, 12, 0, "0:3,50:6,150:12"), "after the run ends"),
    (("explicit", 100, 0, 12, 0, "0-3"), "expected 'update:depth,...'"),
    (("weekly", 100, 3, 12, 3), "choose one of eql, prop, explicit"),
    (("eql", 3, 3, 12, 3), "3 updates are too few for 4 growth stages"),
])
def test_bad_schedules_say_why(args, message):
    with pytest.raises(GrowthConfigError, match=message):
        plan_stages(*args)


def test_bad_operator():
    with pytest.raises(GrowthConfigError, match="choose one of"):
        grow_order("sideways", 3, 3)
    with pytest.raises(GrowthConfigError, match="cannot add 4 layers to a 3-layer model"):
        grow_order("interleaved", 3, 4)


@pytest.mark.parametrize("settings, message", [
    (("sideways", "copied", "after", 0.0, 0), "task.growth.operator='sideways': choose one of interleaved"),
    (("interleaved", "zeroed", "after", 0.0, 0), "task.growth.copy_state='zeroed': choose one of copied, fresh"),
    (("interleaved", "copied", "middle", 0.0, 0), "task.growth.copy_at='middle': choose one of after, before"),
    (("interleaved", "copied", "after", -0.1, 0), "copy_noise=-0.1 and rewarmup_updates=0 must be >= 0"),
    (("interleaved", "copied", "after", 0.0, -5), "rewarmup_updates=-5 must be >= 0"),
])
def test_bad_growth_settings_are_refused_by_name(settings, message):
    with pytest.raises(GrowthConfigError, match=message):
        check_settings(*settings)
    check_settings("midas", "fresh", "before", 0.1, 10)  # every good value passes


def test_teacher_targets_stay_fixed_while_student_grows():
    # Teacher layers 4/8/12 of 12 map to the student layers at the same relative depth.
    assert [[student_layer_for(t, 12, d) for t in (4, 8, 12)] for d in (3, 6, 9, 12)] == [
        [1, 2, 3], [2, 4, 6], [3, 6, 9], [4, 8, 12]]
    # With interleaved growth those are the last layers of the blocks a, b, c.
    assert [grow_names("interleaved")[2][s - 1] for s in (4, 8, 12)] == ["a", "b", "c"]


def test_which_occurrence_is_the_copy():
    interleaved = grow_order("interleaved", 3, 3)  # a a1 b b1 c c1
    assert copy_slots(interleaved, "after") == [1, 3, 5]  # the block's last: the layer that carries t_k
    assert copy_slots(interleaved, "before") == [0, 2, 4]
    stacked = grow_order("stack_top", 3, 3)  # a b c a1 b1 c1
    assert copy_slots(stacked, "after") == [3, 4, 5]
    assert copy_slots(stacked, "before") == [0, 1, 2]
    with pytest.raises(GrowthConfigError, match="copy_at='middle'"):
        copy_slots(interleaved, "middle")


def test_rewarmup_ramps_the_learning_rate_after_each_growth_only():
    stages = plan_stages("eql", 12, 3, 9, 3)  # growths at updates 4 and 8
    assert [s.start_update for s in stages] == [0, 4, 8]
    factors = [rewarmup_factor(stages, u, 2) for u in range(12)]
    assert factors == [1, 1, 1, 1, 1 / 3, 2 / 3, 1, 1, 1 / 3, 2 / 3, 1, 1]
    assert all(rewarmup_factor(stages, u, 0) == 1 for u in range(12))
