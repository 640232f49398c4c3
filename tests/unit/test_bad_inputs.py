"""tests/bad_inputs: every admission-tier case is refused by the models and by the CRD (modelled), with the
expected text; every status-tier case passes admission (only the cluster can judge it)."""

from __future__ import annotations

import pytest

from rayvllm.errors import InvalidSpecError
from rayvllm.models import parse_cluster

from .crdtools import admission_errors
from .inputs import BadInput, bad_inputs

CASES = bad_inputs()
ADMISSION = [case for case in CASES if case.admission]
STATUS_ONLY = [case for case in CASES if not case.admission]


def _id(case: BadInput) -> str:
    return case.path.stem


def test_enough_cases_with_unique_names() -> None:
    assert len(ADMISSION) >= 22
    assert len(STATUS_ONLY) >= 2
    names = [case.body["metadata"]["name"] for case in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", ADMISSION, ids=_id)
def test_models_refuse_with_expected_text(case: BadInput) -> None:
    with pytest.raises(InvalidSpecError) as refused:
        parse_cluster(case.body)
    assert case.expect in str(refused.value)


@pytest.mark.parametrize("case", ADMISSION, ids=_id)
def test_crd_refuses_with_expected_text(case: BadInput) -> None:
    errors = admission_errors(case.body)
    assert any(case.expect in error for error in errors), errors


@pytest.mark.parametrize("case", STATUS_ONLY, ids=_id)
def test_status_only_cases_pass_admission(case: BadInput) -> None:
    parse_cluster(case.body)
    assert admission_errors(case.body) == []
