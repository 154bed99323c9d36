"""Bad input: each problem names the patient, the row and the column, and says how to fix it."""

import io

import numpy as np
import pytest

import twinrx
from twinrx.data import read_nonmem, simulate_nonmem, validate_nonmem
from twinrx.events import DataError, EventTable

HEADER = "ID,TIME,EVID,AMT,CMT,RATE,SS,II,ADDL\n"


def problems_of(text, model="one_cpt_oral", **kw):
    return validate_nonmem(io.StringIO(text), twinrx.get_model(model), **kw)


def one(problems, column):
    hits = [p for p in problems if p.column == column]
    assert len(hits) == 1, problems
    return hits[0]


def test_unsorted_times():
    p = one(problems_of(HEADER + "7,0,1,100,1,0,0,0,0\n7,5,0,0,2,0,0,0,0\n7,2,0,0,2,0,0,0,0\n"), "TIME")
    assert (p.patient, p.row) == ("7", 4)
    assert "sort" in p.fix


def test_negative_amount():
    p = one(problems_of(HEADER + "3,0,1,-100,1,0,0,0,0\n"), "AMT")
    assert (p.patient, p.row) == ("3", 2) and "negative" in p.message


def test_ii_zero_with_addl():
    p = one(problems_of(HEADER + "1,0,1,100,1,0,0,0,3\n"), "II")
    assert p.row == 2 and "ADDL" in p.message and "II > 0" in p.fix


def test_unknown_compartment():
    p = one(problems_of(HEADER + "1,0,1,100,5,0,0,0,0\n"), "CMT")
    assert p.row == 2 and "1..2" in p.fix


def test_non_numeric_cells_all_reported():
    with pytest.raises(DataError) as e:
        read_nonmem(io.StringIO(HEADER + "1,0,1,abc,1,0,0,0,0\n1,x,0,0,2,0,0,0,0\n"))
    cols = sorted((p.column, p.row) for p in e.value.problems)
    assert cols == [("AMT", 2), ("TIME", 3)]
    assert "'abc' is not a finite number" in str(e.value)
    # "inf" parses as a number but is no dose, time or EVID (hypothesis found EVID = inf)
    with pytest.raises(DataError) as e:
        read_nonmem(io.StringIO(HEADER + "1,0,1,inf,1,0,0,0,0\n"))
    assert [(p.column, p.row) for p in e.value.problems] == [("AMT", 2)]


def test_missing_required_columns():
    with pytest.raises(DataError) as e:
        read_nonmem(io.StringIO("ID,AMT\n1,100\n"))
    assert [p.column for p in e.value.problems] == ["TIME"]


def test_modelled_rate_missing():
    text = HEADER + "4,0,1,100,2,-1,0,0,0\n4,1,1,100,2,-2,0,0,0\n"
    probs = problems_of(text)
    assert [(p.row, p.column) for p in probs] == [(2, "RATE"), (3, "RATE")]
    assert "--rate 2=COLUMN" in probs[0].fix and "--duration 2=COLUMN" in probs[1].fix
    # With the modelled rate and duration given, the same data are fine.
    assert problems_of(text, rate={2: "R2"}, duration={2: "D2"}) == []


def test_every_problem_listed_at_once():
    text = HEADER + "1,0,1,-5,1,0,0,0,0\n1,0,1,100,9,0,0,0,0\n2,4,1,100,1,0,0,0,2\n2,1,0,0,2,0,0,0,0\n"
    probs = problems_of(text)
    assert {(p.patient, p.column) for p in probs} == {("1", "AMT"), ("1", "CMT"), ("2", "II"), ("2", "TIME")}


def test_simulate_raises_with_locations():
    with pytest.raises(DataError, match=r"patient 3, row 2, column AMT"):
        simulate_nonmem("one_cpt_oral", io.StringIO(HEADER + "3,0,1,-100,1,0,0,0,0\n"))


def test_unknown_parameter_column():
    with pytest.raises(DataError, match="column 'WTX'"):
        simulate_nonmem("one_cpt_oral", io.StringIO(HEADER + "1,0,1,100,1,0,0,0,0\n"), {"CL": "WTX"})


def test_eventtable_from_records_validates():
    with pytest.raises(DataError, match="column II"):
        EventTable.from_records([0.0], [1], [100.0], [1], addl=[2])


def test_addl_expansion_and_ss_records():
    ev = EventTable.from_records(
        [0.0, 1.0], [1, 1], [100.0, 50.0], [1, 1], ss=[1, 0], ii=[12.0, 0], addl=[2, 0]
    )
    np.testing.assert_array_equal(np.asarray(ev.dose_time), [0.0, 12.0, 24.0, 1.0])
    np.testing.assert_array_equal(np.asarray(ev.dose_first), [True, False, False, True])
    np.testing.assert_array_equal(np.asarray(ev.ss_rec), [0])


def test_comment_rows_skipped_and_dot_is_missing():
    text = "C,ID,TIME,EVID,AMT,CMT\n.,1,0,1,100,1\nC,1,1,0,.,2\n.,1,2,0,.,2\n"
    data = read_nonmem(io.StringIO(text))
    assert data.ids == ["1"]
    np.testing.assert_array_equal(data.columns[0]["TIME"], [0.0, 2.0])
    np.testing.assert_array_equal(data.lines[0], [2, 4])


def test_stacking_a_repeated_table_equals_stacking_copies():
    """``[table] * n`` is read once: the stack must be the same as for distinct copies,
    interleaved with a table of another shape (padding)."""
    import jax

    import twinrx

    def a():
        return twinrx.EventTable.from_records(time=[0.0], evid=[1], amt=[100.0], cmt=[1], ii=[12.0], addl=[3])

    def b():
        return twinrx.EventTable.from_records(
            time=[0.0, 5.0, 6.0], evid=[1, 0, 1], amt=[50.0, 0, 20.0], cmt=[1, 1, 1]
        )

    ta, tb = a(), b()
    shared = twinrx.stack_tables([ta, tb, ta, tb, tb, ta])
    copies = twinrx.stack_tables([a(), b(), a(), b(), b(), a()])
    assert shared.time.shape == (6, 3) and shared.dose_rec.shape == (6, 4)
    for x, y in zip(jax.tree.leaves(shared), jax.tree.leaves(copies)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert shared.max_ss_overlap == copies.max_ss_overlap
