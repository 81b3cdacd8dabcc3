import pytest

from kvmesh.directory.lookup_plan import plan_queries


@pytest.mark.parametrize("owners,me,plan", [
    ([], "me", {}),
    ([["me", "a"], ["b", "me"]], "me", {"me": [0, 1]}),  # owned here: no trip at all
    ([["a", "b"], ["b", "c"], ["c", "b"]], "me", {"b": [0, 1, 2]}),  # one owner covers all
    ([["a", "b"], ["c", "d"]], "me", {"a": [0], "c": [1]}),  # ties: the primary
    ([["a", "me"], ["b", "c"], ["c", "a"], ["c", "d"]], "me",
     {"me": [0], "c": [1, 2, 3]}),
    ([["a"], []], "me", {"a": [0]}),  # a key nobody owns is left out
])
def test_plans_from_a_table(owners, me, plan):
    assert plan_queries(owners, me) == plan


def test_every_owned_key_is_planned_once_on_one_of_its_owners():
    owners = [[f"p{(i * 7) % 9}", f"p{(i * 5 + 1) % 9}"] for i in range(64)]
    plan = plan_queries(owners, "p3")
    planned = sorted(i for idx in plan.values() for i in idx)
    assert planned == list(range(64))
    assert all(peer in owners[i] for peer, idx in plan.items() for i in idx)
    assert len(plan) < len({o[0] for o in owners})  # fewer than asking each primary
