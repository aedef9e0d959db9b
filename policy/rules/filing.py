"""Number filing (R2 outbound enabled, R3 filed and active, R4/R5 the enterprise's own, exact length)."""

from __future__ import annotations

from policy.decision import Check
from policy.rules._util import failed, passed
from policy.rules.refdata import RefData

NAME = "filing"


def check_filing(caller: str, enterprise_id: str | None, ref: RefData) -> Check:
    """Is the (normalised) caller number filed for outbound use by the trunk's enterprise?

    Reason codes:
      ``caller_length_altered``     not filed, but a number filed to this enterprise with digits
                                    appended or removed (R4: no change of number length)
      ``caller_not_filed``          not filed at all (R3)
      ``caller_filing_inactive``    filing suspended or revoked (R3)
      ``caller_outbound_disabled``  filed inbound-only (R2)
      ``caller_not_owned``          filed to another enterprise (R4 no lending/transfer, R5)

    ``enterprise_id`` None (explain with an unknown source) skips the
    ownership and length tests, which need to know whose trunk this is.
    """
    filing = ref.filings.profile(caller)  # the shared profile: nothing built per call
    if filing is None:
        if enterprise_id is not None:
            near = ref.length_altered(caller, enterprise_id)
            if near is not None:
                return failed(
                    NAME,
                    "caller_length_altered",
                    f"{caller} is filed number {near} with its length changed",
                )
        return failed(NAME, "caller_not_filed", f"{caller} is not filed")
    if filing.status != "active":
        return failed(NAME, "caller_filing_inactive", f"filing of {caller} is {filing.status}")
    if not filing.outbound:
        return failed(NAME, "caller_outbound_disabled", f"{caller} is filed inbound-only")
    if enterprise_id is not None and filing.enterprise_id != enterprise_id:
        return failed(
            NAME,
            "caller_not_owned",
            f"{caller} is filed to enterprise {filing.enterprise_id}, not {enterprise_id}",
        )
    return passed(NAME, f"{caller} filed to {filing.enterprise_id}")
